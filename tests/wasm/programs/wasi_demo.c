/* A WASI command for the differential tests (tests/test_wasm_wasi.py), compiled with
 * clang --target=wasm32-wasi: reads the file named by argv[1] (inside a preopened
 * directory), writes it to stdout with its length, the environment variable GREETING and
 * its arguments, a line to stderr, optionally writes a file, and exits with argv[2]. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s FILE EXIT_CODE [OUT_FILE]\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 3;
    }
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    printf("read %zu bytes from %s\n", n, argv[1]);
    fwrite(buf, 1, n, stdout);
    const char *greeting = getenv("GREETING");
    printf("\nGREETING=%s\n", greeting ? greeting : "(unset)");
    for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
    fprintf(stderr, "to stderr\n");
    if (argc > 3) {
        FILE *out = fopen(argv[3], "w");
        if (!out) {
            perror(argv[3]);
            return 4;
        }
        fprintf(out, "written by %s\n", argv[0]);
        fclose(out);
    }
    return atoi(argv[2]);
}
