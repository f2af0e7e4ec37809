// Haven's native I/O helpers: the few Linux calls Node does not expose. Kept tiny on purpose;
// every caller has a portable fallback (src/block/native.ts returns null when this is missing).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <stdint.h>
#include <sys/uio.h>
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

static napi_value Init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"seek", NULL, Seek, NULL, NULL, NULL, napi_default, NULL},
      {"fallocate", NULL, Fallocate, NULL, NULL, NULL, napi_default, NULL},
      {"preadNoWait", NULL, PreadNoWait, NULL, NULL, NULL, napi_default, NULL},
      {"startWriteback", NULL, StartWriteback, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
