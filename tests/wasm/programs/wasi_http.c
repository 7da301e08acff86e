/* An http-mode Wasm function for the host tests: a WASI command that reads the request
 * document from stdin and answers with a response document naming the request's path and
 * body length, and the GREETING variable of its manifest's environment. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    static char request[65536];
    size_t n = fread(request, 1, sizeof request - 1, stdin);
    request[n] = 0;
    const char *path = strstr(request, "\"path\":");
    char shown[64] = "?";
    if (path) sscanf(path + 7, " \"%63[^\"]", shown);
    const char *greeting = getenv("GREETING");
    if (strstr(request, "fail")) {
        fprintf(stderr, "asked to fail\n");
        return 3;
    }
    printf("{\"status\": 201, \"headers\": {\"content-type\": \"text/plain\"}, "
           "\"body\": \"path=%s bytes=%zu greeting=%s\"}",
           shown, n, greeting ? greeting : "-");
    return 0;
}
