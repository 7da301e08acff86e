/* printf.c: vsnprintf/snprintf, the SDK's printf-style formatting (integers, strings, floats). */
#include "sbx.h"

/* ---- Output sink: counts everything, stores what fits ------------------------------- */

typedef struct {
    char *buf;
    size_t size;
    size_t pos; /* length of the full output so far */
} out_t;

static void out_char(out_t *o, char c) {
    if (o->pos + 1 < o->size) o->buf[o->pos] = c;
    o->pos++;
}

static void out_mem(out_t *o, const char *s, size_t n) {
    while (n--) out_char(o, *s++);
}

static void out_pad(out_t *o, char c, long n) {
    while (n-- > 0) out_char(o, c);
}

/* ---- Conversion spec --------------------------------------------------------------- */

enum {
    F_MINUS = 1,  /* left-justify */
    F_PLUS = 2,   /* always a sign */
    F_SPACE = 4,  /* space for a missing sign */
    F_ALT = 8,    /* '#' */
    F_ZERO = 16,  /* pad with zeros */
    F_UPPER = 32, /* X E F G */
};

typedef struct {
    unsigned flags;
    int width;
    int prec; /* -1: none given */
} spec_t;

/* Pads a field of `len` characters (sign/prefix + zeros + body) to the width: before it
 * (right-justified) here, after it (left-justified) in pad_after. */
static void pad_before(out_t *o, const spec_t *sp, long len) {
    if (!(sp->flags & F_MINUS)) out_pad(o, ' ', sp->width - len);
}

static void pad_after(out_t *o, const spec_t *sp, long len) {
    if (sp->flags & F_MINUS) out_pad(o, ' ', sp->width - len);
}

static void fmt_str(out_t *o, const spec_t *sp, const char *s, size_t n) {
    pad_before(o, sp, (long)n);
    out_mem(o, s, n);
    pad_after(o, sp, (long)n);
}

/* ---- Integers ---------------------------------------------------------------------- */

static void fmt_int(out_t *o, const spec_t *sp, uint64_t v, bool neg, bool is_signed,
                    unsigned base) {
    const char *xd = (sp->flags & F_UPPER) ? "0123456789ABCDEF" : "0123456789abcdef";
    char digits[24]; /* reversed; 22 octal digits at most */
    int nd = 0;
    for (uint64_t x = v; x; x /= base) digits[nd++] = xd[x % base];

    long zeros = sp->prec > nd ? sp->prec - nd : 0;
    if (sp->prec < 0 && nd == 0) zeros = 1; /* plain 0; "%.0d" of 0 prints nothing */
    if (base == 8 && (sp->flags & F_ALT) && zeros == 0) zeros = 1; /* leading 0 */

    char prefix[2];
    int np = 0;
    if (neg)
        prefix[np++] = '-';
    else if (is_signed && (sp->flags & F_PLUS))
        prefix[np++] = '+';
    else if (is_signed && (sp->flags & F_SPACE))
        prefix[np++] = ' ';
    if (base == 16 && (sp->flags & F_ALT) && v != 0) {
        prefix[np++] = '0';
        prefix[np++] = (sp->flags & F_UPPER) ? 'X' : 'x';
    }

    long len = np + zeros + nd;
    if ((sp->flags & (F_ZERO | F_MINUS)) == F_ZERO && sp->prec < 0 && sp->width > len) {
        zeros += sp->width - len;
        len = sp->width;
    }
    pad_before(o, sp, len);
    out_mem(o, prefix, (size_t)np);
    out_pad(o, '0', zeros);
    while (nd > 0) out_char(o, digits[--nd]);
    pad_after(o, sp, len);
}

/* ---- Floating point ----------------------------------------------------------------
 * A finite double is m * 2^e exactly, so its decimal expansion is finite: m * 2^e for
 * e >= 0, and m * 5^-e / 10^-e for e < 0. It is computed exactly in base 10^9 limbs
 * (at most 767 digits, for the smallest normals), then rounded half-to-even in decimal,
 * which gives the correctly rounded result for every precision. */

#define BIG_LIMBS 90               /* 767 digits / 9, with room */
#define DIGITS_MAX (BIG_LIMBS * 9) /* decimal digits of the exact expansion */
#define LIMB_BASE 1000000000u

/* b[0..n) *= f (f < 2^31); returns the new limb count. */
static int big_mul(uint32_t *b, int n, uint32_t f) {
    uint64_t carry = 0;
    for (int i = 0; i < n; i++) {
        uint64_t t = (uint64_t)b[i] * f + carry;
        b[i] = (uint32_t)(t % LIMB_BASE);
        carry = t / LIMB_BASE;
    }
    while (carry) {
        b[n++] = (uint32_t)(carry % LIMB_BASE);
        carry /= LIMB_BASE;
    }
    return n;
}

/* Decimal digits of mant * 2^e2 (mant != 0) into d: d[0] is the digit of 10^*exp10.
 * Trailing zeros are dropped; returns the digit count. */
static int exact_digits(uint64_t mant, int e2, char *d, int *exp10) {
    static const uint32_t pow5[14] = {1,       5,        25,        125,       625,
                                      3125,    15625,    78125,     390625,    1953125,
                                      9765625, 48828125, 244140625, 1220703125};
    uint32_t big[BIG_LIMBS];
    int n, k = 0; /* k: decimal places of the exact value */

    while (!(mant & 1)) {
        mant >>= 1;
        e2++;
    }
    big[0] = (uint32_t)(mant % LIMB_BASE);
    big[1] = (uint32_t)(mant / LIMB_BASE); /* mant < 2^53 < 10^18 */
    n = big[1] ? 2 : 1;
    if (e2 >= 0) {
        for (int r = e2; r > 0; r -= 29) n = big_mul(big, n, 1u << (r < 29 ? r : 29));
    } else {
        k = -e2;
        for (int r = k; r > 0; r -= 13) n = big_mul(big, n, pow5[r < 13 ? r : 13]);
    }

    int len = 0;
    char tmp[10];
    int t = 0;
    for (uint32_t x = big[n - 1]; x; x /= 10) tmp[t++] = (char)('0' + x % 10);
    while (t > 0) d[len++] = tmp[--t];
    for (int i = n - 2; i >= 0; i--) {
        uint32_t x = big[i];
        for (int j = 8; j >= 0; j--) {
            d[len + j] = (char)('0' + x % 10);
            x /= 10;
        }
        len += 9;
    }
    *exp10 = len - 1 - k;
    while (len > 0 && d[len - 1] == '0') len--;
    return len;
}

/* Rounds d[0..len) to nd significant digits, half to even (ties are exact here).
 * Returns the new length (0: the value rounded to zero); a carry out of the first digit
 * bumps *exp10. Trailing zeros are dropped. */
static int round_digits(char *d, int len, int *exp10, long nd) {
    if (nd >= len) return len;
    if (nd < 0) return 0; /* below half a unit of the last place */
    bool up;
    if (d[nd] != '5')
        up = d[nd] > '5';
    else if (len > nd + 1)
        up = true; /* more than half: a nonzero digit follows (no trailing zeros) */
    else
        up = nd > 0 && ((d[nd - 1] - '0') & 1);
    len = (int)nd;
    if (up) {
        int i = len - 1;
        while (i >= 0 && d[i] == '9') i--;
        if (i < 0) {
            d[0] = '1';
            len = 1;
            (*exp10)++;
        } else {
            d[i]++;
            len = i + 1;
        }
    }
    while (len > 0 && d[len - 1] == '0') len--;
    return len;
}

typedef struct {
    const char *d;
    int len;   /* 0: the value is zero */
    int exp10; /* power of ten of d[0]; 0 for zero */
} decimal_t;

/* Digit of the decimal at 10^p. */
static char dec_digit(const decimal_t *x, long p) {
    long i = (long)x->exp10 - p;
    return (i >= 0 && i < x->len) ? x->d[i] : '0';
}

/* Length of the body (no sign) in %f style with `prec` fraction digits. */
static long f_len(const decimal_t *x, long prec, bool alt) {
    long ilen = x->exp10 >= 0 ? (long)x->exp10 + 1 : 1;
    return ilen + ((prec > 0 || alt) ? 1 + prec : 0);
}

static void f_out(out_t *o, const decimal_t *x, long prec, bool alt) {
    for (long p = x->exp10 >= 0 ? x->exp10 : 0; p >= 0; p--) out_char(o, dec_digit(x, p));
    if (prec > 0 || alt) out_char(o, '.');
    for (long p = -1; p >= -prec; p--) out_char(o, dec_digit(x, p));
}

static int exp_digits(int e) {
    int a = e < 0 ? -e : e;
    return a >= 100 ? 3 : 2;
}

static long e_len(const decimal_t *x, long prec, bool alt) {
    return 1 + ((prec > 0 || alt) ? 1 + prec : 0) + 2 + exp_digits(x->exp10);
}

static void e_out(out_t *o, const decimal_t *x, long prec, bool alt, bool upper) {
    out_char(o, dec_digit(x, x->exp10));
    if (prec > 0 || alt) out_char(o, '.');
    for (long i = 1; i <= prec; i++) out_char(o, dec_digit(x, (long)x->exp10 - i));
    out_char(o, upper ? 'E' : 'e');
    int e = x->exp10;
    out_char(o, e < 0 ? '-' : '+');
    if (e < 0) e = -e;
    if (e >= 100) out_char(o, (char)('0' + e / 100));
    out_char(o, (char)('0' + e / 10 % 10));
    out_char(o, (char)('0' + e % 10));
}

static void fmt_float(out_t *o, const spec_t *sp, double v, char conv) {
    union {
        double d;
        uint64_t u;
    } bits = {v};
    bool neg = bits.u >> 63;
    int bexp = (int)(bits.u >> 52 & 0x7ff);
    uint64_t frac = bits.u & ((1ull << 52) - 1);
    bool upper = sp->flags & F_UPPER, alt = sp->flags & F_ALT;

    char sign = neg ? '-' : (sp->flags & F_PLUS) ? '+' : (sp->flags & F_SPACE) ? ' ' : 0;
    long slen = sign ? 1 : 0;

    if (bexp == 0x7ff) {
        const char *s = frac ? (upper ? "NAN" : "nan") : (upper ? "INF" : "inf");
        pad_before(o, sp, slen + 3);
        if (sign) out_char(o, sign);
        out_mem(o, s, 3);
        pad_after(o, sp, slen + 3);
        return;
    }

    char d[DIGITS_MAX];
    decimal_t x = {d, 0, 0};
    if (bexp || frac) {
        uint64_t mant = bexp ? frac | (1ull << 52) : frac;
        int e2 = bexp ? bexp - 1075 : -1074;
        x.len = exact_digits(mant, e2, d, &x.exp10);
    }

    long prec = sp->prec < 0 ? 6 : sp->prec;
    bool e_style;
    if (conv == 'f') {
        e_style = false;
        x.len = round_digits(d, x.len, &x.exp10, (long)x.exp10 + 1 + prec);
    } else if (conv == 'e') {
        e_style = true;
        x.len = round_digits(d, x.len, &x.exp10, prec + 1);
    } else { /* 'g': P significant digits, %e style unless -4 <= exponent < P */
        long p = prec ? prec : 1;
        x.len = round_digits(d, x.len, &x.exp10, p);
        int ex = x.len ? x.exp10 : 0;
        e_style = ex < -4 || ex >= p;
        prec = e_style ? p - 1 : p - 1 - ex;
        if (!alt) { /* drop trailing zeros: keep only the digits that exist */
            long need = e_style ? x.len - 1 : (long)x.len - 1 - ex;
            if (need < 0) need = 0;
            if (need < prec) prec = need;
        }
    }
    if (x.len == 0) x.exp10 = 0;

    long len = slen + (e_style ? e_len(&x, prec, alt) : f_len(&x, prec, alt));
    long zeros = 0;
    if ((sp->flags & (F_ZERO | F_MINUS)) == F_ZERO && sp->width > len) {
        zeros = sp->width - len;
        len = sp->width;
    }
    pad_before(o, sp, len);
    if (sign) out_char(o, sign);
    out_pad(o, '0', zeros);
    if (e_style)
        e_out(o, &x, prec, alt, upper);
    else
        f_out(o, &x, prec, alt);
    pad_after(o, sp, len);
}

/* ---- The format loop --------------------------------------------------------------- */

enum { L_NONE, L_HH, L_H, L_L, L_LL, L_Z, L_J, L_T, L_BIG_L };

static int parse_num(const char **fmt) {
    int n = 0;
    while (**fmt >= '0' && **fmt <= '9') {
        if (n < 100000000) n = n * 10 + (**fmt - '0');
        (*fmt)++;
    }
    return n;
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap) {
    out_t o = {buf, size, 0};

    while (*fmt) {
        if (*fmt != '%') {
            out_char(&o, *fmt++);
            continue;
        }
        const char *start = fmt++;
        spec_t sp = {0, 0, -1};

        for (;; fmt++) {
            if (*fmt == '-')
                sp.flags |= F_MINUS;
            else if (*fmt == '+')
                sp.flags |= F_PLUS;
            else if (*fmt == ' ')
                sp.flags |= F_SPACE;
            else if (*fmt == '#')
                sp.flags |= F_ALT;
            else if (*fmt == '0')
                sp.flags |= F_ZERO;
            else
                break;
        }

        if (*fmt == '*') {
            int w = va_arg(ap, int);
            fmt++;
            if (w < 0) {
                sp.flags |= F_MINUS;
                w = w < -100000000 ? 100000000 : -w;
            }
            sp.width = w;
        } else {
            sp.width = parse_num(&fmt);
        }

        if (*fmt == '.') {
            fmt++;
            if (*fmt == '*') {
                int p = va_arg(ap, int);
                fmt++;
                sp.prec = p < 0 ? -1 : p;
            } else {
                sp.prec = parse_num(&fmt);
            }
        }

        int lm = L_NONE;
        switch (*fmt) {
        case 'h':
            lm = L_H;
            if (*++fmt == 'h') {
                lm = L_HH;
                fmt++;
            }
            break;
        case 'l':
            lm = L_L;
            if (*++fmt == 'l') {
                lm = L_LL;
                fmt++;
            }
            break;
        case 'z': lm = L_Z; fmt++; break;
        case 'j': lm = L_J; fmt++; break;
        case 't': lm = L_T; fmt++; break;
        case 'L': lm = L_BIG_L; fmt++; break;
        default: break;
        }

        char conv = *fmt;
        if (conv == 'X' || conv == 'E' || conv == 'F' || conv == 'G') {
            sp.flags |= F_UPPER;
            conv = (char)(conv - 'A' + 'a');
        }
        switch (conv) {
        case 'd':
        case 'i': {
            int64_t v;
            switch (lm) {
            case L_HH: v = (signed char)va_arg(ap, int); break;
            case L_H: v = (short)va_arg(ap, int); break;
            case L_L: v = va_arg(ap, long); break;
            case L_LL:
            case L_BIG_L: v = va_arg(ap, long long); break;
            case L_Z: v = (int64_t)va_arg(ap, size_t); break;
            case L_J: v = va_arg(ap, intmax_t); break;
            case L_T: v = va_arg(ap, ptrdiff_t); break;
            default: v = va_arg(ap, int); break;
            }
            uint64_t u = v < 0 ? -(uint64_t)v : (uint64_t)v;
            fmt_int(&o, &sp, u, v < 0, true, 10);
            break;
        }
        case 'u':
        case 'x':
        case 'o': {
            uint64_t v;
            switch (lm) {
            case L_HH: v = (unsigned char)va_arg(ap, unsigned); break;
            case L_H: v = (unsigned short)va_arg(ap, unsigned); break;
            case L_L: v = va_arg(ap, unsigned long); break;
            case L_LL:
            case L_BIG_L: v = va_arg(ap, unsigned long long); break;
            case L_Z: v = va_arg(ap, size_t); break;
            case L_J: v = va_arg(ap, uintmax_t); break;
            case L_T: v = (uint64_t)va_arg(ap, ptrdiff_t); break;
            default: v = va_arg(ap, unsigned); break;
            }
            fmt_int(&o, &sp, v, false, false, conv == 'u' ? 10 : conv == 'x' ? 16 : 8);
            break;
        }
        case 'p': {
            void *p = va_arg(ap, void *);
            if (!p) {
                fmt_str(&o, &sp, "(nil)", 5);
            } else {
                sp.flags = (sp.flags & ~(unsigned)F_UPPER) | F_ALT;
                fmt_int(&o, &sp, (uintptr_t)p, false, false, 16);
            }
            break;
        }
        case 'c': {
            char c = (char)va_arg(ap, int);
            fmt_str(&o, &sp, &c, 1);
            break;
        }
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s) s = "(null)";
            size_t n = sp.prec >= 0 ? strnlen(s, (size_t)sp.prec) : strlen(s);
            fmt_str(&o, &sp, s, n);
            break;
        }
        case 'f':
        case 'e':
        case 'g': {
            double v = lm == L_BIG_L ? (double)va_arg(ap, long double) : va_arg(ap, double);
            fmt_float(&o, &sp, v, conv);
            break;
        }
        case '%':
            out_char(&o, '%');
            break;
        default:
            /* Unknown or truncated conversion: print it as written. */
            if (!*fmt) {
                out_mem(&o, start, (size_t)(fmt - start));
                continue;
            }
            out_mem(&o, start, (size_t)(fmt - start) + 1);
            break;
        }
        fmt++;
    }

    if (size > 0) buf[o.pos < size ? o.pos : size - 1] = '\0';
    return o.pos > (size_t)__INT_MAX__ ? -1 : (int)o.pos;
}

int snprintf(char *buf, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}
