/* http_echo.c: an example function for the host's HTTP-handler mode (docs/host.md).
 *
 * The host calls handle(str request_json) -> str response_json for every request under
 * /functions/{name}/http/, in fresh sandbox state. Routes:
 *
 *   /hello?name=X   200 text/plain "hello, X"
 *   /status/NNN     status NNN, empty body
 *   /env/NAME       200 text/plain, the manifest's environment value NAME (404 if unset)
 *   /crash          a null-pointer read: the host answers 422 GuestTrap
 *   /spin           loops forever: the host answers 504 CallTimeout
 *   anything else   200 application/json echo of method, path, query and body
 *
 * Build: python -m sandbox build-guest http_echo.c -o http_echo.elf
 * Deploy with the manifest {"mode": "http", "entry": "handle"}.
 */
#include "sbx.h"

#define FIELD_MAX 4096

/* The value of the top-level string member `key` of the request, unescaped into out
 * (NUL-terminated). The host writes the members in a fixed order (method, path, query,
 * headers, body, body_encoding) and escapes every '"' inside strings, so the raw text
 * "key":" occurs only as a member name: for the members before "headers" the first
 * occurrence is the top-level one, for "body" (after it) the last. Returns the length,
 * or -1 if absent or too long. */
static int json_get(const char *json, const char *key, char *out, size_t cap, bool last) {
    char pattern[64];
    size_t klen = (size_t)snprintf(pattern, sizeof pattern, "\"%s\":\"", key);
    const char *found = 0;
    for (const char *q = json; *q; q++) {
        if (!strncmp(q, pattern, klen)) {
            found = q;
            if (!last) break;
        }
    }
    if (!found) return -1;
    const char *p = found + klen;
    size_t n = 0;
    while (*p && *p != '"') {
        char c = *p++;
        if (c == '\\') {
            char e = *p++;
            if (e == 'n') c = '\n';
            else if (e == 't') c = '\t';
            else if (e == 'r') c = '\r';
            else if (e == 'b') c = '\b';
            else if (e == 'f') c = '\f';
            else if (e == 'u') { /* the host escapes only control characters this way */
                unsigned v = 0;
                for (int i = 0; i < 4 && *p; i++, p++) {
                    char h = *p;
                    v = v * 16 + (unsigned)(h <= '9' ? h - '0' : (h | 0x20) - 'a' + 10);
                }
                c = (char)(v < 0x80 ? v : '?');
            } else c = e; /* \" \\ \/ */
        }
        if (n + 1 >= cap) return -1;
        out[n++] = c;
    }
    out[n] = 0;
    return (int)n;
}

/* Appends s as the contents of a JSON string (escaped) to buf at *pos. */
static void json_put(char *buf, size_t cap, size_t *pos, const char *s) {
    for (; *s && *pos + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[(*pos)++] = '\\';
            buf[(*pos)++] = (char)c;
        } else if (c < 0x20) {
            *pos += (size_t)snprintf(buf + *pos, cap - *pos, "\\u%04x", c);
        } else {
            buf[(*pos)++] = (char)c;
        }
    }
    buf[*pos] = 0;
}

static void reply(sbx_value *ret, int status, const char *type, const char *body) {
    static char out[3 * FIELD_MAX + 256];
    size_t pos = (size_t)snprintf(out, sizeof out,
                                  "{\"status\":%d,\"headers\":{\"content-type\":\"%s\"},\"body\":\"",
                                  status, type);
    json_put(out, sizeof out, &pos, body);
    pos += (size_t)snprintf(out + pos, sizeof out - pos, "\"}");
    sbx_ret_str(ret, out, pos);
}

SBX_EXPORT(handle, SBX_TAG_STR, SBX_TAG_STR) {
    const char *req = sbx_arg_str(args, 0, 0);
    static char method[16], path[FIELD_MAX], query[FIELD_MAX], body[FIELD_MAX];
    static char text[3 * FIELD_MAX + 128];
    if (json_get(req, "method", method, sizeof method, false) < 0 ||
        json_get(req, "path", path, sizeof path, false) < 0 ||
        json_get(req, "query", query, sizeof query, false) < 0) {
        reply(ret, 400, "text/plain", "malformed request");
        return;
    }
    if (json_get(req, "body", body, sizeof body, true) < 0) {
        reply(ret, 413, "text/plain", "body too large for this example");
        return;
    }
    if (!strcmp(path, "/hello")) {
        const char *name = "world";
        if (!strncmp(query, "name=", 5)) name = query + 5;
        snprintf(text, sizeof text, "hello, %s", name);
        reply(ret, 200, "text/plain", text);
    } else if (!strncmp(path, "/status/", 8)) {
        int status = 0;
        for (const char *p = path + 8; *p >= '0' && *p <= '9'; p++) status = status * 10 + (*p - '0');
        reply(ret, status, "text/plain", "");
    } else if (!strncmp(path, "/env/", 5)) {
        size_t len;
        const char *value = sbx_host_call_str("getenv", path + 5, &len);
        if (value) reply(ret, 200, "text/plain", value);
        else reply(ret, 404, "text/plain", "not set");
    } else if (!strcmp(path, "/crash")) {
        (void)*(volatile uint64_t *)0;
    } else if (!strcmp(path, "/spin")) {
        for (;;) __asm__ volatile("");
    } else {
        size_t pos = 0;
        pos += (size_t)snprintf(text, sizeof text, "{\"method\":\"%s\",\"path\":\"", method);
        json_put(text, sizeof text, &pos, path);
        pos += (size_t)snprintf(text + pos, sizeof text - pos, "\",\"query\":\"");
        json_put(text, sizeof text, &pos, query);
        pos += (size_t)snprintf(text + pos, sizeof text - pos, "\",\"body\":\"");
        json_put(text, sizeof text, &pos, body);
        snprintf(text + pos, sizeof text - pos, "\"}");
        reply(ret, 200, "application/json", text);
    }
}
