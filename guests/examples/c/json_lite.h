// Just enough JSON for small guest functions in C: read a top-level string or integer field, and write
// an escaped string. Not a general parser: a field is found by its quoted key anywhere in the text, so
// keep inputs flat ({"key": "value", ...}). A real function would use a JSON library (cJSON builds for
// wasm32-wasi unchanged).
#ifndef TARS_JSON_LITE_H
#define TARS_JSON_LITE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The value after `"key":`, or NULL. *end is set past the value.
static const char *json_lite_value(const char *json, size_t len, const char *key, const char **end) {
  size_t klen = strlen(key);
  for (const char *p = json; p + klen + 2 <= json + len; p++) {
    if (*p == '"' && strncmp(p + 1, key, klen) == 0 && p[klen + 1] == '"') {
      const char *q = p + klen + 2;
      while (q < json + len && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
      if (q >= json + len || *q != ':') continue;
      q++;
      while (q < json + len && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r')) q++;
      *end = json + len;
      return q;
    }
  }
  return NULL;
}

// A malloc'ed copy of the string field `key` (escapes other than \" and \\ kept as they are), or NULL.
static char *json_lite_string(const char *json, size_t len, const char *key) {
  const char *end;
  const char *v = json_lite_value(json, len, key, &end);
  if (v == NULL || v >= end || *v != '"') return NULL;
  char *out = malloc((size_t)(end - v));
  if (out == NULL) return NULL;
  size_t n = 0;
  for (const char *p = v + 1; p < end && *p != '"'; p++) {
    if (*p == '\\' && p + 1 < end && (p[1] == '"' || p[1] == '\\')) p++;
    out[n++] = *p;
  }
  out[n] = '\0';
  return out;
}

// The integer field `key`, or `fallback` when it is absent.
static long long json_lite_int(const char *json, size_t len, const char *key, long long fallback) {
  const char *end;
  const char *v = json_lite_value(json, len, key, &end);
  if (v == NULL || v >= end) return fallback;
  char digits[32];
  size_t n = 0;
  while (v < end && n + 1 < sizeof digits && (*v == '-' || (*v >= '0' && *v <= '9'))) digits[n++] = *v++;
  digits[n] = '\0';
  return n ? strtoll(digits, NULL, 10) : fallback;
}

// Writes `s` as a JSON string (quoted, escaped) to `out`.
static void json_lite_write_string(FILE *out, const char *s) {
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') fprintf(out, "\\%c", *p);
    else if (*p < 0x20) fprintf(out, "\\u%04x", *p);
    else fputc(*p, out);
  }
  fputc('"', out);
}

#endif
