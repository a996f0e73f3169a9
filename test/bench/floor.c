/* The floor for `npm run bench`: what an install cannot go below on this machine.
 * Thread 1: read the payload (concatenated zstd frames) → libzstd streaming decompress into 1 MiB
 * buffers → OpenSSL SHA-256 of the image. Thread 2: pwrite each 1 MiB buffer at its offset,
 * fdatasync every 64 MiB and at the end. With a 4th argument "rb" the slot is then read back and
 * hashed again with O_DIRECT (what slotflip's read-back does). Prints {"sha256":..,"bytes":..,"readBackSha256":..}.
 *   gcc -O2 -pthread -o floor floor.c -lzstd -lcrypto     (Debian: gcc libzstd-dev libssl-dev)
 *   floor PAYLOAD SLOT [rb]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>
#define BS (1 << 20)
#define NB 8
static unsigned char *bufs[NB];
static size_t lens[NB];
static int head, tail, count, done;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int outfd;

static void *writer(void *arg) {
  (void)arg;
  off_t off = 0, synced = 0;
  for (;;) {
    pthread_mutex_lock(&mu);
    while (count == 0 && !done) pthread_cond_wait(&cv, &mu);
    if (count == 0 && done) { pthread_mutex_unlock(&mu); break; }
    int i = tail;
    pthread_mutex_unlock(&mu);
    size_t w = 0;
    while (w < lens[i]) {
      ssize_t n = pwrite(outfd, bufs[i] + w, lens[i] - w, off + w);
      if (n <= 0) { perror("pwrite"); exit(2); }
      w += n;
    }
    off += lens[i];
    if (off - synced >= (64 << 20)) { fdatasync(outfd); synced = off; }
    pthread_mutex_lock(&mu); tail = (tail + 1) % NB; count--; pthread_cond_signal(&cv); pthread_mutex_unlock(&mu);
  }
  if (fdatasync(outfd)) { perror("fdatasync"); exit(2); }
  return NULL;
}

static void hex(const unsigned char *md, char *out) { for (int k = 0; k < 32; k++) sprintf(out + 2 * k, "%02x", md[k]); }

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: floor PAYLOAD SLOT [rb]\n"); return 1; }
  int in = open(argv[1], O_RDONLY);
  outfd = open(argv[2], O_WRONLY);
  if (in < 0 || outfd < 0) { perror("open"); return 1; }
  for (int i = 0; i < NB; i++) bufs[i] = malloc(BS);
  pthread_t th;
  pthread_create(&th, NULL, writer, NULL);
  EVP_MD_CTX *h = EVP_MD_CTX_new();
  EVP_DigestInit_ex(h, EVP_sha256(), NULL);
  ZSTD_DCtx *dc = ZSTD_createDCtx();
  size_t inCap = ZSTD_DStreamInSize();
  unsigned char *inbuf = malloc(inCap);
  ZSTD_inBuffer zin = { inbuf, 0, 0 };
  int eof = 0;
  unsigned long long total = 0;
  for (;;) {
    pthread_mutex_lock(&mu);
    while (count == NB) pthread_cond_wait(&cv, &mu);
    int i = head;
    pthread_mutex_unlock(&mu);
    ZSTD_outBuffer zout = { bufs[i], BS, 0 };
    while (zout.pos < zout.size) {
      if (zin.pos == zin.size) {
        if (eof) break;
        ssize_t r = read(in, inbuf, inCap);
        if (r <= 0) { eof = 1; break; }
        zin.size = r; zin.pos = 0;
      }
      size_t rc = ZSTD_decompressStream(dc, &zout, &zin);
      if (ZSTD_isError(rc)) { fprintf(stderr, "zstd: %s\n", ZSTD_getErrorName(rc)); return 3; }
    }
    size_t n = zout.pos;
    if (n == 0) break;
    EVP_DigestUpdate(h, bufs[i], n);
    total += n;
    lens[i] = n;
    pthread_mutex_lock(&mu); head = (head + 1) % NB; count++; pthread_cond_signal(&cv); pthread_mutex_unlock(&mu);
  }
  pthread_mutex_lock(&mu); done = 1; pthread_cond_signal(&cv); pthread_mutex_unlock(&mu);
  pthread_join(th, NULL);
  unsigned char md[32];
  unsigned int ml;
  char sha[65], rbsha[65] = "";
  EVP_DigestFinal_ex(h, md, &ml);
  hex(md, sha);
  if (argc > 3) {
    /* O_DIRECT like slotflip's read-back: the medium, not the page cache (aligned 1 MiB reads) */
    int fd = open(argv[2], O_RDONLY | O_DIRECT);
    if (fd < 0) fd = open(argv[2], O_RDONLY);
    unsigned char *rbuf;
    if (posix_memalign((void **)&rbuf, 4096, BS)) return 1;
    EVP_DigestInit_ex(h, EVP_sha256(), NULL);
    unsigned long long left = total, off = 0;
    while (left > 0) {
      ssize_t r = pread(fd, rbuf, BS, off);
      if (r <= 0) break;
      size_t g = (unsigned long long)r < left ? (size_t)r : left;
      EVP_DigestUpdate(h, rbuf, g);
      left -= g;
      off += r;
    }
    EVP_DigestFinal_ex(h, md, &ml);
    hex(md, rbsha);
    close(fd);
  }
  printf("{\"sha256\":\"%s\",\"bytes\":%llu,\"readBackSha256\":\"%s\"}\n", sha, total, rbsha);
  return 0;
}
