/*
 * token-client.c: get an access token from a running `hallmark-agent run`, in plain C99 and
 * POSIX, as device firmware would (protocol version 1; see "Local socket protocol" in the
 * README). Prints the token on stdout and exits 0; on an error answer prints
 * "<error>: <error_description>" on stderr and exits 1 (75, EX_TEMPFAIL, for "unavailable":
 * worth asking again later); 2 when the agent cannot be reached or answers nonsense.
 *
 *   cc -std=c99 -Wall -Wextra -o token-client agent/examples/token-client.c
 *   ./token-client /run/hallmark-agent/agent.sock
 *   curl -H "Authorization: Bearer $(./token-client /run/hallmark-agent/agent.sock)" ...
 *
 * The answer is one line of compact JSON. The small reader below finds a top-level string
 * field by name, which is all this protocol needs; firmware with a JSON library should use it.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/hallmark-agent/agent.sock"
#define MAX_ANSWER 65536
#define EX_TEMPFAIL 75

/* Connects to the agent's socket, sends the request line, reads the answer line into buf
 * (NUL-terminated, without the newline). Returns 0, or -1 with a message on stderr. */
static int ask(const char *path, const char *request, char *buf, size_t cap)
{
    struct sockaddr_un addr;
    struct timeval timeout = {5, 0};
    size_t len = 0, sent = 0, want = strlen(request);
    int fd;

    if (strlen(path) >= sizeof(addr.sun_path)) {
        fprintf(stderr, "token-client: socket path too long: %s\n", path);
        return -1;
    }
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, path);

    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) {
        perror("token-client: socket");
        return -1;
    }
    /* The agent answers within milliseconds; never hang firmware on a stuck peer. */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        fprintf(stderr, "token-client: cannot connect to %s: %s\n", path, strerror(errno));
        close(fd);
        return -1;
    }
    while (sent < want) {
        ssize_t n = write(fd, request + sent, want - sent);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            perror("token-client: write");
            close(fd);
            return -1;
        }
        sent += (size_t)n;
    }
    for (;;) {
        ssize_t n;
        char *newline;
        if (len + 1 >= cap) {
            fprintf(stderr, "token-client: answer longer than %zu bytes\n", cap - 1);
            close(fd);
            return -1;
        }
        n = read(fd, buf + len, cap - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            perror("token-client: read");
            close(fd);
            return -1;
        }
        if (n == 0) {
            fprintf(stderr, "token-client: the agent closed without a full answer\n");
            close(fd);
            return -1;
        }
        len += (size_t)n;
        buf[len] = '\0';
        newline = strchr(buf, '\n');
        if (newline) {
            *newline = '\0';
            break;
        }
    }
    close(fd);
    return 0;
}

/* Copies the string value of top-level field `key` of the JSON object in `json` into `out`
 * (unescaping \" \\ \/ \n \t; other escapes are kept as written). Returns 0, or -1 if the
 * field is absent, not a string, or does not fit. Assumes the agent's compact output: keys
 * are found by their quoted name followed by a colon. */
static int string_field(const char *json, const char *key, char *out, size_t cap)
{
    char quoted[64];
    const char *p;
    size_t len = 0;

    if ((size_t)snprintf(quoted, sizeof(quoted), "\"%s\":", key) >= sizeof(quoted))
        return -1;
    p = strstr(json, quoted);
    if (!p)
        return -1;
    p += strlen(quoted);
    while (*p == ' ')
        p++;
    if (*p++ != '"')
        return -1;
    for (; *p && *p != '"'; p++) {
        char c = *p;
        if (c == '\\') {
            p++;
            switch (*p) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case '"': case '\\': case '/': c = *p; break;
            case '\0': return -1;
            default:
                if (len + 2 >= cap)
                    return -1;
                out[len++] = '\\';
                c = *p;
            }
        }
        if (len + 1 >= cap)
            return -1;
        out[len++] = c;
    }
    if (*p != '"')
        return -1;
    out[len] = '\0';
    return 0;
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : DEFAULT_SOCKET;
    static char answer[MAX_ANSWER], token[MAX_ANSWER], error[256], description[1024];

    if (argc > 2 || (argc == 2 && argv[1][0] == '-')) {
        fprintf(stderr, "usage: %s [SOCKET] (default %s)\n", argv[0], DEFAULT_SOCKET);
        return 2;
    }
    if (ask(path, "{\"v\":1,\"op\":\"token\"}\n", answer, sizeof(answer)) != 0)
        return 2;
    if (string_field(answer, "access_token", token, sizeof(token)) == 0) {
        puts(token);
        return 0;
    }
    if (string_field(answer, "error", error, sizeof(error)) != 0) {
        fprintf(stderr, "token-client: unexpected answer: %s\n", answer);
        return 2;
    }
    if (string_field(answer, "error_description", description, sizeof(description)) != 0)
        description[0] = '\0';
    fprintf(stderr, "%s: %s\n", error, description);
    return strcmp(error, "unavailable") == 0 ? EX_TEMPFAIL : 1;
}
