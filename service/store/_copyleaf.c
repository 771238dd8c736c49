/* Leaf hashes of stored rows straight from a binary COPY (service/store/copyleaf.py).
 *
 * Each tuple of the COPY holds the columns of copyleaf.COLUMNS; this writes the row's leaf
 * data, the RFC 8785 canonical JSON of {"kind":"row","item":ITEM} (docs/integrity.md,
 * "Leaves"), and hashes it (SHA-256 of 0x00 || data, OpenSSL's, as hashlib's). It writes only
 * what it is sure of: a row holding anything else (a key outside the Basic Multilingual Plane
 * or with an escape, a number past 15 digits or of exponent form, a JSON escape PostgreSQL
 * does not write, invalid UTF-8, a time outside years 1-9999, ...) is marked unsure and left
 * to the Python path, which decides (as it also decides every row whose hash here differs
 * from the stored one). Hand-written rather than a JSON library: the point is to write the
 * canonical bytes from PostgreSQL's own text of the jsonb without building objects.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <openssl/evp.h>

#define COLUMNS 28
#define MAX_DEPTH 64

enum { OK = 0, UNSURE = 1, FAIL = -1 };

typedef struct {
    unsigned char *buf;
    size_t len, cap;
} Out;

static int grow(Out *o, size_t more) {
    if (o->len + more <= o->cap) return OK;
    size_t cap = o->cap ? o->cap : 4096;
    while (cap < o->len + more) cap *= 2;
    unsigned char *buf = PyMem_Realloc(o->buf, cap);
    if (!buf) {
        PyErr_NoMemory();
        return FAIL;
    }
    o->buf = buf;
    o->cap = cap;
    return OK;
}

static inline int put(Out *o, const void *s, size_t n) {
    if (grow(o, n)) return FAIL;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    return OK;
}

#define PUT_LIT(o, lit) put((o), (lit), sizeof(lit) - 1)

/* The length of the valid UTF-8 sequence at p (lead byte >= 0x80), 0 when invalid. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end) {
    unsigned char c = p[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return 0;
    if ((size_t)(end - p) < n) return 0;
    if (p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return n;
}

static const char HEX[] = "0123456789abcdef";

/* Bytes written as they are, in a JSON string and in a column's text: ASCII from 0x20 but
 * '"' and '\\' (filled in at import). */
static unsigned char PLAIN[256];

/* A text column as a JSON string, escaped as RFC 8785 (ECMAScript's JSON.stringify) does. */
static int put_text(Out *o, const unsigned char *s, size_t n) {
    const unsigned char *end = s + n, *run = s;
    if (grow(o, n + 2)) return FAIL;
    o->buf[o->len++] = '"';
    while (s < end) {
        if (PLAIN[*s]) {
            s++;
            continue;
        }
        unsigned char c = *s;
        if (c >= 0x80) {
            size_t k = utf8_len(s, end);
            if (!k) return UNSURE;
            s += k;
            continue;
        }
        if (put(o, run, s - run)) return FAIL;
        char esc[6] = {'\\', 0, '0', '0', 0, 0};
        size_t k = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            esc[1] = 'u';
            esc[4] = HEX[c >> 4];
            esc[5] = HEX[c & 15];
            k = 6;
        }
        if (put(o, esc, k)) return FAIL;
        run = ++s;
    }
    if (put(o, run, s - run)) return FAIL;
    return PUT_LIT(o, "\"");
}

/* A double as ECMAScript writes it, where Python's repr (the shortest round-trip digits)
 * writes it alike: without an exponent (1e-4 <= |v| < 1e16). Elsewhere: unsure. */
static double last_value = 1.0;
static char last_text[32] = "1";

static int put_double(Out *o, double v) {
    if (!isfinite(v)) return UNSURE;
    if (v == 0) return PUT_LIT(o, "0");
    if (v != last_value) {
        char *text = PyOS_double_to_string(v, 'r', 0, 0, NULL);
        if (!text) return FAIL;
        size_t n = strlen(text);
        if (strchr(text, 'e') || n >= sizeof last_text) {
            PyMem_Free(text);
            return UNSURE;
        }
        memcpy(last_text, text, n + 1);
        last_value = v;
        PyMem_Free(text);
    }
    return put(o, last_text, strlen(last_text));
}

/* --- JSON text (PostgreSQL's jsonb output) to its canonical form ---------------------------- */

typedef struct {
    const unsigned char *p, *end;
    Out *o;
    int depth;
} Json;

static void skip_ws(Json *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\n' || *j->p == '\t' || *j->p == '\r'))
        j->p++;
}

/* A JSON string copied as it is when it is already canonical: escapes only those RFC 8785
 * writes (\" \\ \b \f \n \r \t, \u00xx lowercase for other controls), valid UTF-8. `key`:
 * also unsure of any escape or character outside the BMP (keys are sorted as UTF-16). */
static int json_string(Json *j, int key) {
    const unsigned char *s = j->p, *end = j->end;
    if (s >= end || *s != '"') return UNSURE;
    s++;
    for (;;) {
        while (s < end && PLAIN[*s]) s++;
        if (s >= end) return UNSURE;
        unsigned char c = *s;
        if (c == '"') break;
        if (c < 0x20) return UNSURE;
        if (c == '\\') {
            if (key || s + 1 >= end) return UNSURE;
            unsigned char e = s[1];
            if (e == '"' || e == '\\' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't') {
                s += 2;
                continue;
            }
            if (e != 'u' || end - s < 6 || s[2] != '0' || s[3] != '0') return UNSURE;
            unsigned char h = s[4], l = s[5];
            if (h != '0' && h != '1') return UNSURE;
            int lv = (l >= '0' && l <= '9') ? l - '0' : (l >= 'a' && l <= 'f') ? l - 'a' + 10 : -1;
            if (lv < 0) return UNSURE;
            int v = (h - '0') * 16 + lv;
            if (v == 8 || v == 9 || v == 10 || v == 12 || v == 13) return UNSURE;
            s += 6;
            continue;
        }
        if (c >= 0x80) {
            if (key && c >= 0xF0) return UNSURE;
            size_t k = utf8_len(s, end);
            if (!k) return UNSURE;
            s += k;
            continue;
        }
        s++;
    }
    s++;
    if (put(j->o, j->p, s - j->p)) return FAIL;
    j->p = s;
    return OK;
}

static int json_number(Json *j) {
    const unsigned char *s = j->p, *end = j->end, *start = s;
    int fraction = 0;
    if (s < end && *s == '-') s++;
    const unsigned char *digits = s;
    if (s < end && *s == '0') s++;
    else if (s < end && *s >= '1' && *s <= '9')
        while (s < end && *s >= '0' && *s <= '9') s++;
    else
        return UNSURE;
    size_t whole = s - digits;
    if (s < end && *s == '.') {
        fraction = 1;
        s++;
        if (s >= end || *s < '0' || *s > '9') return UNSURE;
        while (s < end && *s >= '0' && *s <= '9') s++;
    }
    if (s < end && (*s == 'e' || *s == 'E')) return UNSURE; /* PostgreSQL writes none */
    j->p = s;
    if (!fraction) {
        /* An integer of at most 15 digits is exactly a double, written as its digits. */
        if (whole > 15) return UNSURE;
        if (whole == 1 && *digits == '0') return PUT_LIT(j->o, "0");
        return put(j->o, start, s - start);
    }
    char text[64];
    if ((size_t)(s - start) >= sizeof text) return UNSURE;
    memcpy(text, start, s - start);
    text[s - start] = 0;
    char *stop;
    double v = PyOS_string_to_double(text, &stop, NULL);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return UNSURE;
    }
    if (*stop) return UNSURE;
    return put_double(j->o, v);
}

static int json_value(Json *j);

static Out scratch; /* json_object's copy of its members */

typedef struct {
    const unsigned char *key;
    size_t key_len, start, end;
} Member;

static int member_cmp(const void *a, const void *b) {
    const Member *x = a, *y = b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->key, y->key, n);
    if (c) return c;
    return (x->key_len > y->key_len) - (x->key_len < y->key_len);
}

/* An object, its members sorted by key (UTF-8 byte order: code point order, which is
 * UTF-16's for keys in the BMP). */
static int json_object(Json *j) {
    Out *o = j->o;
    Member small[16], *members = small;
    size_t count = 0, room = 16;
    int rc = OK;
    j->p++; /* '{' */
    if (PUT_LIT(o, "{")) return FAIL;
    size_t start = o->len;
    skip_ws(j);
    if (j->p < j->end && *j->p == '}') {
        j->p++;
        return PUT_LIT(o, "}");
    }
    for (;;) {
        skip_ws(j);
        if (count == room) {
            Member *more = PyMem_Malloc(2 * room * sizeof(Member));
            if (!more) {
                PyErr_NoMemory();
                rc = FAIL;
                goto done;
            }
            memcpy(more, members, count * sizeof(Member));
            if (members != small) PyMem_Free(members);
            members = more;
            room *= 2;
        }
        Member *m = &members[count++];
        m->start = o->len;
        m->key = j->p + 1;
        if ((rc = json_string(j, 1))) goto done;
        m->key_len = (size_t)(j->p - m->key) - 1;
        skip_ws(j);
        if (j->p >= j->end || *j->p != ':') {
            rc = UNSURE;
            goto done;
        }
        j->p++;
        if ((rc = PUT_LIT(o, ":"))) goto done;
        if ((rc = json_value(j))) goto done;
        m->end = o->len;
        skip_ws(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            continue;
        }
        if (j->p < j->end && *j->p == '}') {
            j->p++;
            break;
        }
        rc = UNSURE;
        goto done;
    }
    for (size_t i = 1; i < count; i++) /* insertion sort: objects are small */
        for (size_t k = i; k > 0 && member_cmp(&members[k - 1], &members[k]) > 0; k--) {
            Member t = members[k];
            members[k] = members[k - 1];
            members[k - 1] = t;
        }
    for (size_t i = 1; i < count; i++)
        if (member_cmp(&members[i - 1], &members[i]) == 0) {
            rc = UNSURE; /* a duplicate key: JSON readers differ on which one counts */
            goto done;
        }
    {
        /* The members as written, copied aside (the members' values are all written by now,
         * so one scratch buffer serves every object), then back in key order. */
        size_t n = o->len - start;
        scratch.len = 0;
        if (put(&scratch, o->buf + start, n) || grow(o, count)) { /* count: the commas */
            rc = FAIL;
            goto done;
        }
        o->len = start;
        for (size_t i = 0; i < count; i++) {
            if (i) o->buf[o->len++] = ',';
            memcpy(o->buf + o->len, scratch.buf + (members[i].start - start),
                   members[i].end - members[i].start);
            o->len += members[i].end - members[i].start;
        }
        rc = PUT_LIT(o, "}");
    }
done:
    if (members != small) PyMem_Free(members);
    return rc;
}

static int json_array(Json *j) {
    j->p++; /* '[' */
    if (PUT_LIT(j->o, "[")) return FAIL;
    skip_ws(j);
    if (j->p < j->end && *j->p == ']') {
        j->p++;
        return PUT_LIT(j->o, "]");
    }
    for (int first = 1;; first = 0) {
        int rc;
        if (!first && PUT_LIT(j->o, ",")) return FAIL;
        if ((rc = json_value(j))) return rc;
        skip_ws(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            continue;
        }
        if (j->p < j->end && *j->p == ']') {
            j->p++;
            return PUT_LIT(j->o, "]");
        }
        return UNSURE;
    }
}

static int json_word(Json *j, const char *word, size_t n) {
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n)) return UNSURE;
    j->p += n;
    return put(j->o, word, n);
}

static int json_value(Json *j) {
    int rc;
    skip_ws(j);
    if (j->p >= j->end) return UNSURE;
    if (++j->depth > MAX_DEPTH) return UNSURE;
    switch (*j->p) {
    case '{': rc = json_object(j); break;
    case '[': rc = json_array(j); break;
    case '"': rc = json_string(j, 0); break;
    case 't': rc = json_word(j, "true", 4); break;
    case 'f': rc = json_word(j, "false", 5); break;
    case 'n': rc = json_word(j, "null", 4); break;
    default: rc = json_number(j);
    }
    j->depth--;
    return rc;
}

/* A jsonb column (binary: version 1, then its text). */
static int put_jsonb(Out *o, const unsigned char *s, int32_t n) {
    if (n < 1 || s[0] != 1) return UNSURE;
    Json j = {s + 1, s + n, o, 0};
    int rc = json_value(&j);
    if (rc) return rc;
    skip_ws(&j);
    return j.p == j.end ? OK : UNSURE;
}

/* --- the binary columns ----------------------------------------------------------------------- */

static inline uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint64_t be64(const unsigned char *p) {
    return ((uint64_t)be32(p) << 32) | be32(p + 4);
}

static void digits(unsigned char *at, unsigned v, int n) {
    while (n--) {
        at[n] = '0' + v % 10;
        v /= 10;
    }
}

/* A timestamptz (microseconds since 2000-01-01 UTC) as the API writes it:
 * "YYYY-MM-DDTHH:MM:SS[.ffffff]Z", the fraction only when there is one. */
static int put_time(Out *o, const unsigned char *s) {
    int64_t us = (int64_t)be64(s);
    if (us == INT64_MAX || us == INT64_MIN) return UNSURE; /* infinity */
    int64_t secs = us / 1000000, frac = us % 1000000;
    if (frac < 0) {
        frac += 1000000;
        secs -= 1;
    }
    int64_t days = secs / 86400, sod = secs % 86400;
    if (sod < 0) {
        sod += 86400;
        days -= 1;
    }
    /* Civil date of a day count (H. Hinnant's days_from_civil, inverted), from 1970-01-01. */
    int64_t z = days + 10957 + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = yoe + era * 400, doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153, d = doy - (153 * mp + 2) / 5 + 1;
    int64_t m = mp < 10 ? mp + 3 : mp - 9;
    y += m <= 2;
    if (y < 1 || y > 9999) return UNSURE;
    unsigned char t[29] = "\"0000-00-00T00:00:00";
    digits(t + 1, (unsigned)y, 4);
    digits(t + 6, (unsigned)m, 2);
    digits(t + 9, (unsigned)d, 2);
    digits(t + 12, (unsigned)(sod / 3600), 2);
    digits(t + 15, (unsigned)(sod / 60 % 60), 2);
    digits(t + 18, (unsigned)(sod % 60), 2);
    size_t n = 20;
    if (frac) {
        t[n++] = '.';
        digits(t + n, (unsigned)frac, 6);
        n += 6;
    }
    t[n++] = 'Z';
    t[n++] = '"';
    return put(o, t, n);
}

static int put_uuid(Out *o, const unsigned char *s) {
    unsigned char t[38];
    size_t n = 0;
    t[n++] = '"';
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) t[n++] = '-';
        t[n++] = HEX[s[i] >> 4];
        t[n++] = HEX[s[i] & 15];
    }
    t[n++] = '"';
    return put(o, t, n);
}

static size_t dotted(const unsigned char *a, char *t) {
    size_t k = 0;
    for (int i = 0; i < 4; i++) {
        if (i) t[k++] = '.';
        unsigned v = a[i];
        if (v >= 100) t[k++] = (char)('0' + v / 100);
        if (v >= 10) t[k++] = (char)('0' + v / 10 % 10);
        t[k++] = (char)('0' + v % 10);
    }
    return k;
}

/* An inet (binary: family, bits, is_cidr, length, address) as PostgreSQL's host() writes
 * it: IPv4 dotted; IPv6 in lowercase hex groups, the longest run of two or more zero groups
 * (the first of equal ones) as "::", and the last 32 bits dotted after "::" or "::ffff:"
 * when the address is an IPv4-compatible or IPv4-mapped one. */
static int put_inet(Out *o, const unsigned char *s, int32_t n) {
    char t[64];
    size_t k = 0;
    if (n < 4 || n != 4 + (int32_t)s[3]) return UNSURE;
    const unsigned char *a = s + 4;
    t[k++] = '"';
    if (s[0] == 2 && s[3] == 4) {
        k += dotted(a, t + k);
    } else if (s[0] == 3 && s[3] == 16) {
        unsigned w[8];
        int best = -1, best_len = 0, cur = -1, cur_len = 0;
        for (int i = 0; i < 8; i++) {
            w[i] = (unsigned)a[2 * i] << 8 | a[2 * i + 1];
            if (w[i]) {
                cur = -1;
                continue;
            }
            if (cur < 0) cur = i, cur_len = 0;
            if (++cur_len > best_len) best = cur, best_len = cur_len;
        }
        if (best_len < 2) best = -1;
        for (int i = 0; i < 8; i++) {
            if (best >= 0 && i >= best && i < best + best_len) {
                if (i == best) t[k++] = ':';
                continue;
            }
            if (i) t[k++] = ':';
            if (i == 6 && best == 0 && (best_len == 6 || (best_len == 5 && w[5] == 0xffff))) {
                k += dotted(a + 12, t + k);
                break;
            }
            int shift = 12;
            while (shift > 0 && !(w[i] >> shift)) shift -= 4;
            for (; shift >= 0; shift -= 4) t[k++] = HEX[(w[i] >> shift) & 15];
        }
        if (best >= 0 && best + best_len == 8) t[k++] = ':';
    } else {
        return UNSURE;
    }
    t[k++] = '"';
    return put(o, t, k);
}

static int put_int4(Out *o, const unsigned char *s) {
    int32_t v = (int32_t)be32(s);
    char t[12];
    size_t n = sizeof t;
    uint32_t u = v < 0 ? 0u - (uint32_t)v : (uint32_t)v;
    do {
        t[--n] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) t[--n] = '-';
    return put(o, t + n, sizeof t - n);
}

static int put_float8(Out *o, const unsigned char *s) {
    uint64_t bits = be64(s);
    double v;
    memcpy(&v, &bits, sizeof v);
    return put_double(o, v);
}

/* --- a row --------------------------------------------------------------------------------- */

enum {
    C_SEQ, C_ID, C_TS, C_RECEIVED_AT, C_ACTION, C_CATEGORY, C_SEVERITY, C_OUTCOME,
    C_ACTOR_ID, C_ACTOR_TYPE, C_ACTOR_NAME, C_ACTOR_EMAIL,
    C_ENTITY_TYPE, C_ENTITY_ID, C_ENTITY_NAME, C_TENANT,
    C_REQUEST_ID, C_IP, C_USER_AGENT, C_METHOD, C_PATH, C_STATUS, C_DURATION_MS,
    C_CHANGES, C_METADATA, C_PRESENTATION, C_SOURCE, C_RECEIVED_VIA,
};

typedef struct {
    const unsigned char *v[COLUMNS];
    int32_t n[COLUMNS]; /* -1: NULL */
} Row;

#define TRY(call)                 \
    do {                          \
        int rc_ = (call);         \
        if (rc_) return rc_;      \
    } while (0)

static int put_nullable_text(Out *o, const Row *r, int c) {
    if (r->n[c] < 0) return PUT_LIT(o, "null");
    return put_text(o, r->v[c], (size_t)r->n[c]);
}

/* The members named of an object that leaves out NULL columns ("name": column, in key order),
 * or null when every one is NULL. */
typedef struct {
    const char *name; /* `"name":` */
    int column;
    int (*write)(Out *, const unsigned char *, int32_t);
} Part;

static int part_text(Out *o, const unsigned char *s, int32_t n) {
    return put_text(o, s, (size_t)n);
}

static int part_inet(Out *o, const unsigned char *s, int32_t n) {
    return put_inet(o, s, n);
}

static int part_int4(Out *o, const unsigned char *s, int32_t n) {
    return n == 4 ? put_int4(o, s) : UNSURE;
}

static int part_float8(Out *o, const unsigned char *s, int32_t n) {
    return n == 8 ? put_float8(o, s) : UNSURE;
}

static int put_parts(Out *o, const Row *r, const Part *parts, size_t count) {
    int any = 0;
    for (size_t i = 0; i < count; i++) {
        const Part *p = &parts[i];
        if (r->n[p->column] < 0) continue;
        TRY(put(o, any ? "," : "{", 1));
        TRY(put(o, p->name, strlen(p->name)));
        TRY(p->write(o, r->v[p->column], r->n[p->column]));
        any = 1;
    }
    return any ? PUT_LIT(o, "}") : PUT_LIT(o, "null");
}

static const Part ACTOR[] = {
    {"\"email\":", C_ACTOR_EMAIL, part_text},
    {"\"id\":", C_ACTOR_ID, part_text},
    {"\"name\":", C_ACTOR_NAME, part_text},
    {"\"type\":", C_ACTOR_TYPE, part_text},
};
static const Part ENTITY[] = {
    {"\"id\":", C_ENTITY_ID, part_text},
    {"\"name\":", C_ENTITY_NAME, part_text},
    {"\"type\":", C_ENTITY_TYPE, part_text},
};
static const Part REQUEST[] = {
    {"\"duration_ms\":", C_DURATION_MS, part_float8},
    {"\"id\":", C_REQUEST_ID, part_text},
    {"\"ip\":", C_IP, part_inet},
    {"\"method\":", C_METHOD, part_text},
    {"\"path\":", C_PATH, part_text},
    {"\"status\":", C_STATUS, part_int4},
    {"\"user_agent\":", C_USER_AGENT, part_text},
};

static int put_nullable_jsonb(Out *o, const Row *r, int c) {
    if (r->n[c] < 0) return PUT_LIT(o, "null");
    return put_jsonb(o, r->v[c], r->n[c]);
}

static int put_nullable_time(Out *o, const Row *r, int c) {
    if (r->n[c] < 0) return PUT_LIT(o, "null");
    return r->n[c] == 8 ? put_time(o, r->v[c]) : UNSURE;
}

/* The leaf data of a row (item() of service/store/items.py, keys sorted). */
static int put_leaf(Out *o, const Row *r) {
    TRY(PUT_LIT(o, "{\"item\":{\"action\":"));
    TRY(put_nullable_text(o, r, C_ACTION));
    TRY(PUT_LIT(o, ",\"actor\":"));
    if (r->n[C_ACTOR_ID] < 0) TRY(PUT_LIT(o, "null"));
    else TRY(put_parts(o, r, ACTOR, 4));
    TRY(PUT_LIT(o, ",\"category\":"));
    TRY(put_nullable_text(o, r, C_CATEGORY));
    TRY(PUT_LIT(o, ",\"changes\":"));
    TRY(put_nullable_jsonb(o, r, C_CHANGES));
    TRY(PUT_LIT(o, ",\"entity\":"));
    if (r->n[C_ENTITY_TYPE] < 0 && r->n[C_ENTITY_ID] < 0) TRY(PUT_LIT(o, "null"));
    else TRY(put_parts(o, r, ENTITY, 3));
    TRY(PUT_LIT(o, ",\"id\":"));
    if (r->n[C_ID] < 0) TRY(PUT_LIT(o, "null"));
    else if (r->n[C_ID] != 16) return UNSURE;
    else TRY(put_uuid(o, r->v[C_ID]));
    TRY(PUT_LIT(o, ",\"metadata\":"));
    TRY(put_nullable_jsonb(o, r, C_METADATA));
    TRY(PUT_LIT(o, ",\"outcome\":"));
    TRY(put_nullable_text(o, r, C_OUTCOME));
    TRY(PUT_LIT(o, ",\"presentation\":"));
    TRY(put_nullable_jsonb(o, r, C_PRESENTATION));
    TRY(PUT_LIT(o, ",\"received_at\":"));
    TRY(put_nullable_time(o, r, C_RECEIVED_AT));
    TRY(PUT_LIT(o, ",\"received_via\":"));
    TRY(put_nullable_text(o, r, C_RECEIVED_VIA));
    TRY(PUT_LIT(o, ",\"request\":"));
    TRY(put_parts(o, r, REQUEST, 7));
    TRY(PUT_LIT(o, ",\"severity\":"));
    TRY(put_nullable_text(o, r, C_SEVERITY));
    TRY(PUT_LIT(o, ",\"source\":"));
    TRY(put_nullable_text(o, r, C_SOURCE));
    TRY(PUT_LIT(o, ",\"tenant\":"));
    TRY(put_nullable_text(o, r, C_TENANT));
    TRY(PUT_LIT(o, ",\"ts\":"));
    TRY(put_nullable_time(o, r, C_TS));
    return PUT_LIT(o, "},\"kind\":\"row\"}");
}

/* --- the module ------------------------------------------------------------------------------ */

/* The fields of a tuple at *q (past its field count) into `row`, *q moved past them: 1, or 0
 * when the data ends first (the rest is in the next chunk), -1 for a negative length other
 * than NULL's. */
static int read_fields(const unsigned char **pq, const unsigned char *end, Row *row) {
    const unsigned char *q = *pq;
    for (int c = 0; c < COLUMNS; c++) {
        if (end - q < 4) return 0;
        int32_t n = (int32_t)be32(q);
        q += 4;
        if (n < -1) return -1;
        if (n > end - q) return 0;
        row->v[c] = q;
        row->n[c] = n;
        if (n > 0) q += n;
    }
    *pq = q;
    return 1;
}

static EVP_MD *sha256_md;
static EVP_MD_CTX *sha256_ctx;
static Out leaf;

static int leaf_hash(const unsigned char *data, size_t n, unsigned char *hash) {
    static const unsigned char prefix = 0;
    if (!EVP_DigestInit_ex(sha256_ctx, sha256_md, NULL) ||
        !EVP_DigestUpdate(sha256_ctx, &prefix, 1) || !EVP_DigestUpdate(sha256_ctx, data, n) ||
        !EVP_DigestFinal_ex(sha256_ctx, hash, NULL)) {
        PyErr_SetString(PyExc_RuntimeError, "SHA-256 failed");
        return FAIL;
    }
    return OK;
}

PyDoc_STRVAR(hash_rows_doc,
"hash_rows(data, offset) -> (offset, seqs, hashes, unsure, finished)\n\n"
"The tuples of a binary COPY's data from `offset` (past its header) up to the last whole\n"
"one: where the next begins, their seqs (a list), their leaf hashes (32 bytes each, in\n"
"order; zeros for a row marked unsure), the positions (in this call's rows) of the rows\n"
"left to the Python path, and whether the COPY's trailer was reached.");

static PyObject *hash_rows(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t offset;
    if (!PyArg_ParseTuple(args, "y*n", &view, &offset)) return NULL;
    const unsigned char *data = view.buf, *end = data + view.len;
    const unsigned char *p = data + offset;
    PyObject *seqs = PyList_New(0), *unsure = PyList_New(0), *result = NULL;
    Out hashes = {0};
    int finished = 0;
    if (!seqs || !unsure) goto out;
    if (offset < 0 || offset > view.len) {
        PyErr_SetString(PyExc_ValueError, "offset out of range");
        goto out;
    }
    for (Py_ssize_t at = 0;; at++) {
        const unsigned char *q = p;
        if (end - q < 2) break;
        int16_t fields = (int16_t)((q[0] << 8) | q[1]);
        q += 2;
        if (fields == -1) {
            finished = 1;
            p = q;
            break;
        }
        if (fields != COLUMNS) {
            PyErr_Format(PyExc_ValueError, "a COPY tuple of %d columns, not %d", fields, COLUMNS);
            goto out;
        }
        Row row;
        int fields_read = read_fields(&q, end, &row);
        if (fields_read < 0) {
            PyErr_SetString(PyExc_ValueError, "a COPY field of negative length");
            goto out;
        }
        if (!fields_read) break;
        p = q;
        if (row.n[C_SEQ] != 8) {
            PyErr_SetString(PyExc_ValueError, "a COPY tuple without its seq");
            goto out;
        }
        PyObject *seq = PyLong_FromLongLong((long long)be64(row.v[C_SEQ]));
        if (!seq || PyList_Append(seqs, seq)) {
            Py_XDECREF(seq);
            goto out;
        }
        Py_DECREF(seq);
        if (grow(&hashes, 32)) goto out;
        leaf.len = 0;
        int rc = put_leaf(&leaf, &row);
        if (rc == FAIL) goto out;
        if (rc == UNSURE) {
            memset(hashes.buf + hashes.len, 0, 32);
            PyObject *position = PyLong_FromSsize_t(at);
            if (!position || PyList_Append(unsure, position)) {
                Py_XDECREF(position);
                goto out;
            }
            Py_DECREF(position);
        } else if (leaf_hash(leaf.buf, leaf.len, hashes.buf + hashes.len)) {
            goto out;
        }
        hashes.len += 32;
    }
    result = Py_BuildValue("(nOy#OO)", (Py_ssize_t)(p - data), seqs, hashes.buf ? (char *)hashes.buf : "",
                           (Py_ssize_t)hashes.len, unsure, finished ? Py_True : Py_False);
out:
    PyMem_Free(hashes.buf);
    Py_XDECREF(seqs);
    Py_XDECREF(unsure);
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(leaf_data_doc,
"leaf_data(tuple) -> bytes or None\n\n"
"The leaf data of one binary COPY tuple (no header), or None when unsure (for tests).");

static PyObject *leaf_data(PyObject *self, PyObject *args) {
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "y*", &view)) return NULL;
    const unsigned char *q = view.buf, *end = q + view.len;
    PyObject *result = NULL;
    Row row;
    if (end - q < 2 || (int16_t)((q[0] << 8) | q[1]) != COLUMNS) goto bad;
    q += 2;
    if (read_fields(&q, end, &row) != 1 || q != end) goto bad;
    leaf.len = 0;
    int rc = put_leaf(&leaf, &row);
    if (rc == FAIL) goto out;
    if (rc == UNSURE) {
        result = Py_NewRef(Py_None);
        goto out;
    }
    result = PyBytes_FromStringAndSize((const char *)leaf.buf, (Py_ssize_t)leaf.len);
    goto out;
bad:
    PyErr_SetString(PyExc_ValueError, "not one binary COPY tuple of the leaf's columns");
out:
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"hash_rows", hash_rows, METH_VARARGS, hash_rows_doc},
    {"leaf_data", leaf_data, METH_VARARGS, leaf_data_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_copyleaf", "Leaf hashes of stored rows from a binary COPY.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__copyleaf(void) {
    for (int c = 0x20; c < 0x80; c++) PLAIN[c] = c != '"' && c != '\\';
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL); /* fetched once, not on every digest */
#else
    sha256_md = (EVP_MD *)EVP_sha256();
#endif
    sha256_ctx = EVP_MD_CTX_new();
    if (!sha256_md || !sha256_ctx) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA-256");
        return NULL;
    }
    return PyModule_Create(&module);
}
