/* Compute kernels for the Wasm benchmark (benches/bench_wasm.py), compiled to a
 * freestanding wasm32 module by clang (no libc, no WASI): each export returns a checksum
 * so both engines are checked to compute the same thing. */
#include <stdint.h>

#define EXPORT(name) __attribute__((export_name(#name)))

EXPORT(fib) int32_t fib(int32_t n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

static uint8_t composite[1 << 21];

/* The number of primes below n (n <= 2^21). */
EXPORT(sieve) int32_t sieve(int32_t n) {
    if (n > (int32_t)sizeof composite) n = sizeof composite;
    for (int32_t i = 0; i < n; i++) composite[i] = 0;
    int32_t count = 0;
    for (int32_t i = 2; i < n; i++) {
        if (composite[i]) continue;
        count++;
        for (int64_t j = (int64_t)i * i; j < n; j += i) composite[j] = 1;
    }
    return count;
}

#define N_MAX 128
static double ma[N_MAX * N_MAX], mb[N_MAX * N_MAX], mc[N_MAX * N_MAX];

/* c = a * b for n x n matrices (n <= 128) of deterministic values; returns the trace
 * of c, truncated. */
EXPORT(matmul) int64_t matmul(int32_t n) {
    if (n > N_MAX) n = N_MAX;
    for (int32_t i = 0; i < n * n; i++) {
        ma[i] = (double)(i % 7) * 0.5 + 1.0;
        mb[i] = (double)(i % 5) * 0.25 - 0.5;
    }
    for (int32_t i = 0; i < n; i++)
        for (int32_t j = 0; j < n; j++) {
            double sum = 0;
            for (int32_t k = 0; k < n; k++) sum += ma[i * n + k] * mb[k * n + j];
            mc[i * n + j] = sum;
        }
    double trace = 0;
    for (int32_t i = 0; i < n; i++) trace += mc[i * n + i];
    return (int64_t)(trace * 1000.0);
}

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void block(uint32_t h[8], const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = hh + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

static uint8_t data[1 << 20];

/* SHA-256 of `len` bytes (<= 1 MiB) of a fixed pattern; returns the first 32 bits of
 * the digest. */
EXPORT(sha256) uint32_t sha256(int32_t len) {
    if (len > (int32_t)sizeof data - 64) len = sizeof data - 64;
    for (int32_t i = 0; i < len; i++) data[i] = (uint8_t)(i * 31 + 7);
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    int32_t full = len / 64 * 64;
    for (int32_t off = 0; off < full; off += 64) block(h, data + off);
    uint8_t tail[128] = {0};
    int32_t rest = len - full;
    for (int32_t i = 0; i < rest; i++) tail[i] = data[full + i];
    tail[rest] = 0x80;
    int32_t tail_len = rest + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) tail[tail_len - 1 - i] = (uint8_t)(bits >> (8 * i));
    block(h, tail);
    if (tail_len == 128) block(h, tail + 64);
    return h[0];
}
