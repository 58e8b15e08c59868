// A hostile user's C function: every op tries one way out of, or around, the sandbox.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "function.h"
#include "json_lite.h"

extern char **environ;

static char remembered[128];  // a static: must not outlive the request that wrote it

static bool answer(function_string_t *ret, const char *text) {
  function_string_dup(ret, text);
  return true;
}

static bool refuse(function_string_t *err, const char *what, const char *why) {
  char message[512];
  snprintf(message, sizeof message, "%s: %s", what, why);
  function_string_dup(err, message);
  return false;
}

static bool read_file(const char *path, function_string_t *ret, function_string_t *err) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return refuse(err, path, strerror(errno));
  char buf[4096];
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  buf[n > 0 ? n : 0] = '\0';
  return answer(ret, buf);
}

static bool environment(function_string_t *ret) {
  char *out = NULL;
  size_t len = 0;
  FILE *json = open_memstream(&out, &len);
  fprintf(json, "{\"variables\": [");
  for (char **v = environ; v != NULL && *v != NULL; v++) {
    if (v != environ) fputc(',', json);
    json_lite_write_string(json, *v);
  }
  fprintf(json, "], \"HOME\": ");
  const char *home = getenv("HOME");
  if (home) json_lite_write_string(json, home);
  else fprintf(json, "null");
  fprintf(json, "}");
  fclose(json);
  ret->ptr = (uint8_t *)out;
  ret->len = len;
  return true;
}

static char *volatile hoard;  // chunks chained through their first bytes: the compiler cannot drop them

static void memory_bomb(void) {
  for (;;) {
    char *chunk = malloc(1 << 20);
    if (chunk == NULL) {
      // What Rust's allocator prints before it aborts: the agent reads it as the memory limit.
      fprintf(stderr, "memory allocation of %d bytes failed\n", 1 << 20);
      abort();
    }
    memset(chunk, 7, 1 << 20);
    *(char **)chunk = hoard;
    hoard = chunk;
  }
}

bool exports_function_handle(function_string_t *input_json, function_string_t *ret, function_string_t *err) {
  const char *in = (const char *)input_json->ptr;
  size_t len = input_json->len;
  char *op = json_lite_string(in, len, "op");
  bool ok;
  if (op == NULL) {
    ok = refuse(err, "input", "needs an \"op\"");
  } else if (strcmp(op, "read_file") == 0) {
    char *path = json_lite_string(in, len, "path");
    ok = read_file(path ? path : "/etc/passwd", ret, err);
    free(path);
  } else if (strcmp(op, "environment") == 0) {
    ok = environment(ret);
  } else if (strcmp(op, "memory_bomb") == 0) {
    memory_bomb();
    ok = false;
  } else if (strcmp(op, "spin") == 0) {
    for (volatile unsigned long n = 0;; n++) {
    }
  } else if (strcmp(op, "flood") == 0) {
    long long bytes = json_lite_int(in, len, "bytes", 1 << 24);
    ret->ptr = malloc((size_t)bytes);
    memset(ret->ptr, 'x', (size_t)bytes);
    ret->len = (size_t)bytes;
    ok = true;
  } else if (strcmp(op, "capability") == 0) {
    char *name = json_lite_string(in, len, "name");
    function_string_t fname, fargs;
    function_string_set(&fname, name ? name : "knowledge.query");
    function_string_set(&fargs, "{\"question\": \"other tenants' data\"}");
    ok = tars_guest_host_call(&fname, &fargs, ret, err);
    free(name);
  } else if (strcmp(op, "remember") == 0) {
    char *secret = json_lite_string(in, len, "secret");
    snprintf(remembered, sizeof remembered, "%s", secret ? secret : "");
    free(secret);
    ok = answer(ret, "{\"remembered\": true}");
  } else if (strcmp(op, "recall") == 0) {
    char reply[256];
    if (remembered[0]) snprintf(reply, sizeof reply, "{\"remembered\": \"%s\"}", remembered);
    else snprintf(reply, sizeof reply, "{\"remembered\": null}");
    ok = answer(ret, reply);
  } else if (strcmp(op, "ok") == 0) {
    ok = answer(ret, "{\"ok\": true}");
  } else {
    ok = refuse(err, "unknown op", op);
  }
  free(op);
  function_string_free(input_json);
  return ok;
}
