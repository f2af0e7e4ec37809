// Haven's native I/O helpers: the few Linux calls Node does not expose. Kept tiny on purpose;
// every caller has a portable fallback (src/block/native.ts returns null when this is missing).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif
#ifndef FALLOC_FL_ZERO_RANGE
#define FALLOC_FL_ZERO_RANGE 0x10
#endif

static int64_t arg_i64(napi_env env, napi_value v) {
  int64_t out = 0;
  napi_get_value_int64(env, v, &out);
  return out;
}

static napi_value num(napi_env env, double d) {
  napi_value v;
  napi_create_double(env, d, &v);
  return v;
}

static int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < want) {
    napi_throw_type_error(env, NULL, "haven_io: missing arguments");
    return 0;
  }
  return 1;
}

// seek(fd, offset, whence) with whence 3 (SEEK_DATA) or 4 (SEEK_HOLE): the offset, or -errno.
static napi_value Seek(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  int whence = (int)arg_i64(env, argv[2]);
  if (whence != SEEK_DATA && whence != SEEK_HOLE) {
    napi_throw_range_error(env, NULL, "haven_io: whence must be SEEK_DATA or SEEK_HOLE");
    return NULL;
  }
  off_t r = lseek((int)arg_i64(env, argv[0]), (off_t)arg_i64(env, argv[1]), whence);
  return num(env, r < 0 ? -(double)errno : (double)r);
}

// fallocate(fd, mode, offset, length): 0, or -errno. Modes: 1 punch hole, 2 zero range.
static napi_value Fallocate(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!get_args(env, info, 4, argv)) return NULL;
  int which = (int)arg_i64(env, argv[1]);
  int mode = which == 1 ? (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) : which == 2 ? (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE) : -1;
  if (mode < 0) {
    napi_throw_range_error(env, NULL, "haven_io: fallocate mode must be 1 (punch) or 2 (zero)");
    return NULL;
  }
  int r = fallocate((int)arg_i64(env, argv[0]), mode, (off_t)arg_i64(env, argv[2]), (off_t)arg_i64(env, argv[3]));
  return num(env, r < 0 ? -(double)errno : 0);
}

// preadNoWait(fd, buffer, offset): bytes read, or -errno (-EAGAIN when not in the page cache).
static napi_value PreadNoWait(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  void *data;
  size_t len;
  if (napi_get_typedarray_info(env, argv[1], NULL, &len, &data, NULL, NULL) != napi_ok) {
    napi_throw_type_error(env, NULL, "haven_io: buffer must be a Uint8Array");
    return NULL;
  }
  struct iovec iov = {data, len};
  ssize_t r = preadv2((int)arg_i64(env, argv[0]), &iov, 1, (off_t)arg_i64(env, argv[2]), RWF_NOWAIT);
  return num(env, r < 0 ? -(double)errno : (double)r);
}

// startWriteback(fd, offset, length): asks the kernel to start writing that range's dirty pages
// to the disk now, without waiting (sync_file_range SYNC_FILE_RANGE_WRITE; length 0: to the end):
// a later fsync/syncfs then finds little left to do. 0, or -errno.
static napi_value StartWriteback(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  int r = sync_file_range((int)arg_i64(env, argv[0]), (off_t)arg_i64(env, argv[1]), (off_t)arg_i64(env, argv[2]),
                          SYNC_FILE_RANGE_WRITE);
  return num(env, r < 0 ? -(double)errno : 0);
}

// ---- read replies sent from the file (zero copy) ---------------------------------------------
//
// sendFile(sockFd, fileFd, headers, headerLength, offsets, lengths, count, callback): on the
// thread pool, for each of `count` replies, sends its header (headerLength bytes of `headers`)
// and then `lengths[i]` bytes of the file from `offsets[i]` with sendfile(2): the data goes from
// the page cache to the socket without passing through user space. A socket that stays full for
// SEND_WAIT_MS stops the job early (a client that does not read must not hold a pool thread);
// callback(sent, errno) gets the bytes sent in all (headers included) and 0, or the bytes sent
// before a failure and its errno. The caller owns the socket's writes until the callback runs.

#define SEND_WAIT_MS 200

typedef struct {
  napi_async_work work;
  napi_ref callback;
  napi_ref headers_ref;
  int sock;
  int file;
  uint8_t *headers;
  size_t header_len;
  double *offsets; // copied: the job must not read JS memory that might move or be reused
  double *lengths;
  uint32_t count;
  double sent;
  int err;
} SendJob;

// Waits until the socket can take more; 0 when it can, -1 on timeout or error (errno set).
static int wait_writable(int fd) {
  struct pollfd p = {fd, POLLOUT, 0};
  int r;
  do r = poll(&p, 1, SEND_WAIT_MS);
  while (r < 0 && errno == EINTR);
  if (r == 0) {
    errno = EAGAIN;
    return -1;
  }
  if (r < 0) return -1;
  if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) {
    errno = EPIPE;
    return -1;
  }
  return 0;
}

static void send_execute(napi_env env, void *data) {
  (void)env;
  SendJob *j = data;
  for (uint32_t i = 0; i < j->count; i++) {
    const uint8_t *h = j->headers + (size_t)i * j->header_len;
    size_t done = 0;
    while (done < j->header_len) {
      ssize_t n = send(j->sock, h + done, j->header_len - done, MSG_MORE | MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        done += (size_t)n;
        j->sent += (double)n;
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && errno == EAGAIN) {
        if (wait_writable(j->sock) < 0) goto fail;
      } else {
        if (n == 0) errno = EPIPE;
        goto fail;
      }
    }
    off_t off = (off_t)j->offsets[i];
    size_t left = (size_t)j->lengths[i];
    while (left > 0) {
      ssize_t n = sendfile(j->sock, j->file, &off, left);
      if (n > 0) {
        left -= (size_t)n;
        j->sent += (double)n;
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else if (n < 0 && errno == EAGAIN) {
        if (wait_writable(j->sock) < 0) goto fail;
      } else {
        if (n == 0) errno = EIO; // the file ended before the range did
        goto fail;
      }
    }
  }
  j->err = 0;
  return;
fail:
  j->err = errno;
}

static void send_complete(napi_env env, napi_status status, void *data) {
  SendJob *j = data;
  napi_value cb, global, argv[2];
  napi_get_reference_value(env, j->callback, &cb);
  napi_get_global(env, &global);
  argv[0] = num(env, j->sent);
  argv[1] = num(env, status == napi_ok ? (double)j->err : (double)ECANCELED);
  napi_delete_reference(env, j->callback);
  napi_delete_reference(env, j->headers_ref);
  napi_delete_async_work(env, j->work);
  free(j->offsets);
  free(j);
  napi_call_function(env, global, cb, 2, argv, NULL);
}

static int float64_array(napi_env env, napi_value v, double **out, size_t *len) {
  napi_typedarray_type t;
  void *data;
  if (napi_get_typedarray_info(env, v, &t, len, &data, NULL, NULL) != napi_ok || t != napi_float64_array)
    return 0;
  *out = data;
  return 1;
}

static napi_value SendFile(napi_env env, napi_callback_info info) {
  napi_value argv[8];
  if (!get_args(env, info, 8, argv)) return NULL;
  void *hdata;
  size_t hlen;
  double *offsets, *lengths;
  size_t nofs, nlen;
  if (napi_get_typedarray_info(env, argv[2], NULL, &hlen, &hdata, NULL, NULL) != napi_ok ||
      !float64_array(env, argv[4], &offsets, &nofs) || !float64_array(env, argv[5], &lengths, &nlen)) {
    napi_throw_type_error(env, NULL, "haven_io: sendFile takes a Uint8Array and two Float64Arrays");
    return NULL;
  }
  int64_t header_len = arg_i64(env, argv[3]);
  int64_t count = arg_i64(env, argv[6]);
  if (count < 1 || header_len < 0 || (size_t)count > nofs || (size_t)count > nlen ||
      (size_t)(header_len * count) > hlen) {
    napi_throw_range_error(env, NULL, "haven_io: sendFile count, header length and arrays disagree");
    return NULL;
  }
  SendJob *j = calloc(1, sizeof(SendJob));
  double *copy = malloc(sizeof(double) * 2 * (size_t)count);
  if (!j || !copy) {
    free(j);
    free(copy);
    napi_throw_error(env, NULL, "haven_io: out of memory");
    return NULL;
  }
  memcpy(copy, offsets, sizeof(double) * (size_t)count);
  memcpy(copy + count, lengths, sizeof(double) * (size_t)count);
  j->offsets = copy;
  j->lengths = copy + count;
  j->sock = (int)arg_i64(env, argv[0]);
  j->file = (int)arg_i64(env, argv[1]);
  j->headers = hdata;
  j->header_len = (size_t)header_len;
  j->count = (uint32_t)count;
  napi_create_reference(env, argv[2], 1, &j->headers_ref); // keeps the headers alive for the job
  napi_create_reference(env, argv[7], 1, &j->callback);
  napi_value name;
  napi_create_string_utf8(env, "haven_io.sendFile", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, send_execute, send_complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return NULL;
}

// ---- write payloads received straight into the file ------------------------------------------
//
// recvWrites(sockFd, fileFd, size, state, replies, callback): on the thread pool, receives write
// payloads straight into the file (recv into a private buffer, pwrite): a write's payload never
// reaches JavaScript. `state` (Float64Array, in and out, see the S_ indexes) names the write whose
// payload is arriving (offset, remaining bytes, cookie, FUA, an errno already met). With
// S_LOOP set the job also owns the socket's writes: it sends that write's reply itself and goes
// on with the following requests for as long as they are large writes (plain or FUA) within the
// export and arrive promptly; it stops at anything else, leaving it unread in the socket. Replies
// the socket would not take are left in `replies` (S_UNSENT bytes) for the caller to send first.
// A socket that stays empty mid-payload for SEND_WAIT_MS stops the job with that write's rest
// described in `state` (S_REMAINING > 0: the caller receives it). callback(sockErrno): 0, or the
// socket's errno (the client went away or broke the protocol: the caller closes).

#define RECV_BUF (256 * 1024)
#define WRITE_MIN (128 * 1024)
#define MAX_WRITE (32 * 1024 * 1024)
#define JOB_NS (20 * 1000000LL)  // a job yields the thread after this long
#define NEXT_WAIT_MS 2           // how long it waits for the next request's header

enum {
  S_OFFSET,     // in/out: where the current write's next bytes go
  S_REMAINING,  // in/out: its bytes still to receive
  S_COOKIE_HI,  // in/out: its cookie (two 32-bit halves)
  S_COOKIE_LO,
  S_FUA,        // in/out: 1 when it is a FUA write
  S_ERRNO,      // in/out: the file errno met on it so far (NBD's: 5 or 28), 0 if none
  S_LOOP,       // in: 1 when the job owns the socket's writes (sends replies, goes on)
  S_REPLIED,    // out: the current write was completed and its reply queued by the job
  S_WRITES,     // out: further writes completed (replies queued by the job)
  S_BYTES,      // out: payload bytes received in all
  S_UNSENT,     // out: reply bytes at the start of `replies` the socket did not take
  S_COUNT
};

#define REPLY_LEN 16

typedef struct {
  napi_async_work work;
  napi_ref callback;
  napi_ref state_ref;
  napi_ref replies_ref;
  int sock;
  int file;
  double size;
  double *state;
  uint8_t *replies;
  size_t replies_cap;
  size_t replies_len;
  size_t replies_sent;
  int pipe[2]; // for splice; -1 when the job copies instead
  size_t pipe_size;
  int file_splice; // 0 once the file refused splice: read from the pipe and pwrite
  int sock_err;
} RecvJob;

static int wait_for(int fd, short events, int ms) {
  struct pollfd p = {fd, events, 0};
  int r;
  do r = poll(&p, 1, ms);
  while (r < 0 && errno == EINTR);
  if (r == 0) {
    errno = EAGAIN;
    return -1;
  }
  if (r < 0) return -1;
  if ((p.revents & events) == 0 && (p.revents & (POLLERR | POLLHUP | POLLNVAL))) {
    errno = EPIPE;
    return -1;
  }
  return 0;
}

static long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static uint32_t be32(const uint8_t *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void put32(uint8_t *p, uint32_t v) {
  p[0] = v >> 24;
  p[1] = v >> 16;
  p[2] = v >> 8;
  p[3] = v;
}

// Sends what it can of the queued replies without waiting.
static int flush_replies(RecvJob *j) {
  while (j->replies_sent < j->replies_len) {
    ssize_t n = send(j->sock, j->replies + j->replies_sent, j->replies_len - j->replies_sent,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) j->replies_sent += (size_t)n;
    else if (n < 0 && errno == EINTR) continue;
    else if (n < 0 && errno == EAGAIN) return 0;
    else return -1;
  }
  j->replies_len = j->replies_sent = 0;
  return 0;
}

static void queue_reply(RecvJob *j, int nbd_errno) {
  uint8_t *r = j->replies + j->replies_len;
  put32(r, 0x67446698);
  put32(r + 4, (uint32_t)nbd_errno);
  put32(r + 8, (uint32_t)j->state[S_COOKIE_HI]);
  put32(r + 12, (uint32_t)j->state[S_COOKIE_LO]);
  j->replies_len += REPLY_LEN;
}

// Moves what the pipe holds (n bytes, spliced from the socket) into the file at the write's
// offset. A file that cannot splice (EINVAL) gets the bytes read out of the pipe and pwritten;
// after a file error they are read out and dropped. 0, or -1 on a pipe error.
static int drain_pipe(RecvJob *j, uint8_t *buf, size_t n) {
  double *s = j->state;
  off_t off = (off_t)s[S_OFFSET];
  while (n > 0) {
    ssize_t m;
    if (!s[S_ERRNO] && j->file_splice) {
      m = splice(j->pipe[0], NULL, j->file, &off, n, SPLICE_F_MOVE);
      if (m < 0 && errno == EINTR) continue;
      if (m < 0 && errno == EINVAL) {
        j->file_splice = 0;
        continue;
      }
      if (m <= 0) {
        s[S_ERRNO] = (m < 0 && errno == ENOSPC) ? 28 : 5;
        continue;
      }
    } else {
      m = read(j->pipe[0], buf, n < RECV_BUF ? n : RECV_BUF);
      if (m < 0 && errno == EINTR) continue;
      if (m <= 0) return -1;
      for (ssize_t w = 0; w < m && !s[S_ERRNO];) {
        ssize_t k = pwrite(j->file, buf + w, (size_t)(m - w), off + w);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) s[S_ERRNO] = (k < 0 && errno == ENOSPC) ? 28 : 5;
        else w += k;
      }
      off += m;
    }
    n -= (size_t)m;
  }
  return 0;
}

// Takes up to `want` bytes off the socket into the file: through the pipe (splice: the socket's
// pages go to the page cache with one copy, none through user space) or, where splice does not
// apply, recv into `buf` and pwrite. The bytes taken, or -1 with errno (EAGAIN: none there yet).
static ssize_t take_some(RecvJob *j, uint8_t *buf, size_t want) {
  double *s = j->state;
  if (j->pipe[0] >= 0) {
    ssize_t n = splice(j->sock, NULL, j->pipe[1], NULL, want < j->pipe_size ? want : j->pipe_size,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      if (drain_pipe(j, buf, (size_t)n) < 0) {
        errno = EIO;
        return -1;
      }
      return n;
    }
    if (n == 0) {
      errno = EPIPE;
      return -1;
    }
    if (errno != EINVAL) return -1;
    // This socket or file cannot splice: the copying path from now on.
    close(j->pipe[0]);
    close(j->pipe[1]);
    j->pipe[0] = j->pipe[1] = -1;
  }
  ssize_t n = recv(j->sock, buf, want < RECV_BUF ? want : RECV_BUF, MSG_DONTWAIT);
  if (n == 0) errno = EPIPE;
  if (n <= 0) return -1;
  off_t off = (off_t)s[S_OFFSET];
  for (ssize_t w = 0; w < n && !s[S_ERRNO];) {
    ssize_t m = pwrite(j->file, buf + w, (size_t)(n - w), off + w);
    if (m < 0 && errno == EINTR) continue;
    if (m <= 0) s[S_ERRNO] = (m < 0 && errno == ENOSPC) ? 28 : 5;
    else w += m;
  }
  return n;
}

// Receives the current write's remaining payload into the file. 0 when all of it is here;
// -1 with j->sock_err set (EAGAIN: the client paused, the state says what is left).
static int receive_payload(RecvJob *j, uint8_t *buf) {
  double *s = j->state;
  while (s[S_REMAINING] > 0) {
    ssize_t n = take_some(j, buf, (size_t)s[S_REMAINING]);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      // Replies waiting for a full socket go out while we wait for the client anyway.
      if (flush_replies(j) < 0 || wait_for(j->sock, POLLIN, SEND_WAIT_MS) < 0) {
        j->sock_err = errno;
        return -1;
      }
      continue;
    }
    if (n < 0) {
      j->sock_err = errno;
      return -1;
    }
    s[S_OFFSET] += (double)n;
    s[S_REMAINING] -= (double)n;
    s[S_BYTES] += (double)n;
  }
  if (s[S_FUA] && !s[S_ERRNO] && fdatasync(j->file) < 0) s[S_ERRNO] = 5;
  return 0;
}

// Takes the next request off the socket if it is a large write this job may receive: 1 (state
// set), 0 (stop: nothing came in time, or it is another request, left unread), -1 on a socket error.
static int next_write(RecvJob *j) {
  uint8_t h[28];
  for (;;) {
    ssize_t n = recv(j->sock, h, sizeof h, MSG_PEEK | MSG_DONTWAIT);
    if (n == (ssize_t)sizeof h) break;
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) return 0; // end of stream: the caller's read sees it
    if (n < 0 && errno != EAGAIN) return 0;
    if (flush_replies(j) < 0) {
      j->sock_err = errno;
      return -1;
    }
    if (wait_for(j->sock, POLLIN, NEXT_WAIT_MS) < 0) return 0;
  }
  uint32_t flags_type = be32(h + 4);
  uint16_t flags = flags_type >> 16, type = flags_type & 0xffff;
  double offset = (double)be32(h + 16) * 4294967296.0 + (double)be32(h + 20);
  double length = (double)be32(h + 24);
  if (be32(h) != 0x25609513 || type != 1 || (flags & ~1u) || length < WRITE_MIN || length > MAX_WRITE ||
      offset + length > j->size || offset >= 9007199254740992.0)
    return 0;
  for (size_t got = 0; got < sizeof h;) { // the bytes are there: peeked
    ssize_t n = recv(j->sock, h + got, sizeof h - got, MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      j->sock_err = n == 0 ? EPIPE : errno;
      return -1;
    }
    got += (size_t)n;
  }
  double *s = j->state;
  s[S_OFFSET] = offset;
  s[S_REMAINING] = length;
  s[S_COOKIE_HI] = be32(h + 8);
  s[S_COOKIE_LO] = be32(h + 12);
  s[S_FUA] = flags & 1;
  s[S_ERRNO] = 0;
  return 1;
}

static void recv_execute(napi_env env, void *data) {
  (void)env;
  RecvJob *j = data;
  double *s = j->state;
  uint8_t *buf = malloc(RECV_BUF);
  if (!buf) {
    j->sock_err = ENOMEM;
    return;
  }
  j->pipe[0] = j->pipe[1] = -1;
  j->file_splice = 1;
  if (pipe2(j->pipe, O_CLOEXEC) == 0) {
    int sz = fcntl(j->pipe[1], F_SETPIPE_SZ, RECV_BUF);
    j->pipe_size = sz > 0 ? (size_t)sz : 65536;
  } else j->pipe[0] = j->pipe[1] = -1;
  long long until = now_ns() + JOB_NS;
  if (receive_payload(j, buf) < 0) goto out;
  if (!s[S_LOOP]) goto out;
  queue_reply(j, (int)s[S_ERRNO]);
  s[S_REPLIED] = 1;
  while (j->replies_len + REPLY_LEN <= j->replies_cap && now_ns() < until) {
    int r = next_write(j);
    if (r <= 0) break;
    if (receive_payload(j, buf) < 0) goto out;
    queue_reply(j, (int)s[S_ERRNO]);
    s[S_WRITES] += 1;
    if (flush_replies(j) < 0) {
      j->sock_err = errno;
      goto out;
    }
  }
  if (flush_replies(j) < 0) j->sock_err = errno;
out:
  s[S_UNSENT] = (double)(j->replies_len - j->replies_sent);
  if (j->replies_sent > 0 && j->replies_len > j->replies_sent)
    memmove(j->replies, j->replies + j->replies_sent, j->replies_len - j->replies_sent);
  if (j->pipe[0] >= 0) {
    close(j->pipe[0]);
    close(j->pipe[1]);
  }
  free(buf);
}

static void recv_complete(napi_env env, napi_status status, void *data) {
  RecvJob *j = data;
  napi_value cb, global, argv[1];
  napi_get_reference_value(env, j->callback, &cb);
  napi_get_global(env, &global);
  argv[0] = num(env, status == napi_ok ? (double)j->sock_err : (double)ECANCELED);
  napi_delete_reference(env, j->callback);
  napi_delete_reference(env, j->state_ref);
  napi_delete_reference(env, j->replies_ref);
  napi_delete_async_work(env, j->work);
  free(j);
  napi_call_function(env, global, cb, 1, argv, NULL);
}

static napi_value RecvWrites(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  if (!get_args(env, info, 6, argv)) return NULL;
  double *state;
  size_t nstate, rlen;
  void *rdata;
  if (!float64_array(env, argv[3], &state, &nstate) || nstate < S_COUNT ||
      napi_get_typedarray_info(env, argv[4], NULL, &rlen, &rdata, NULL, NULL) != napi_ok || rlen < REPLY_LEN) {
    napi_throw_type_error(env, NULL, "haven_io: recvWrites takes a state Float64Array and a replies Uint8Array");
    return NULL;
  }
  RecvJob *j = calloc(1, sizeof(RecvJob));
  if (!j) {
    napi_throw_error(env, NULL, "haven_io: out of memory");
    return NULL;
  }
  j->sock = (int)arg_i64(env, argv[0]);
  j->file = (int)arg_i64(env, argv[1]);
  j->size = (double)arg_i64(env, argv[2]);
  j->state = state;
  j->replies = rdata;
  j->replies_cap = rlen - rlen % REPLY_LEN;
  state[S_REPLIED] = state[S_WRITES] = state[S_BYTES] = state[S_UNSENT] = 0;
  // Both arrays stay referenced (alive, not moved: their stores are off the V8 heap) for the job.
  napi_create_reference(env, argv[3], 1, &j->state_ref);
  napi_create_reference(env, argv[4], 1, &j->replies_ref);
  napi_create_reference(env, argv[5], 1, &j->callback);
  napi_value name;
  napi_create_string_utf8(env, "haven_io.recvWrites", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, recv_execute, recv_complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return NULL;
}

// dup(fd) and close(fd): the fd, or -errno. A connection sends from its own duplicate of the
// socket's descriptor, so that the number cannot be reused by another file while a job runs.
static napi_value Dup(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  int r = fcntl((int)arg_i64(env, argv[0]), F_DUPFD_CLOEXEC, 0);
  return num(env, r < 0 ? -(double)errno : (double)r);
}

static napi_value Close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  int r = close((int)arg_i64(env, argv[0]));
  return num(env, r < 0 ? -(double)errno : 0);
}

static napi_value Init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"seek", NULL, Seek, NULL, NULL, NULL, napi_default, NULL},
      {"fallocate", NULL, Fallocate, NULL, NULL, NULL, napi_default, NULL},
      {"preadNoWait", NULL, PreadNoWait, NULL, NULL, NULL, napi_default, NULL},
      {"startWriteback", NULL, StartWriteback, NULL, NULL, NULL, napi_default, NULL},
      {"sendFile", NULL, SendFile, NULL, NULL, NULL, napi_default, NULL},
      {"recvWrites", NULL, RecvWrites, NULL, NULL, NULL, napi_default, NULL},
      {"dup", NULL, Dup, NULL, NULL, NULL, napi_default, NULL},
      {"close", NULL, Close, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
