// Haven's librbd binding: Ceph RBD images as block devices (src/storage/rbd/native.ts).
//
// Data path: rbd_aio_* requests whose completions librbd runs on its own threads; each completion
// is handed to the JS thread through one thread-safe function per environment, which calls the
// `onComplete(id, result)` given to init() and releases the completion there. A request costs
// librbd's completion and the thread-safe function's queue node, nothing else: the request id
// travels as the completion's argument, reads land in the caller's buffer, writes are sent from
// it (librbd's zero-copy path; the caller keeps the buffer alive until its completion).
//
// Control path (create, snapshot, clone, list, ...): plain synchronous librbd calls, answered
// with -errno on failure. Connecting and diff_iterate, which may take long, run on the thread pool.
#include <errno.h>
#include <node_api.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

enum { K_CLUSTER = 1, K_IOCTX = 2, K_IMAGE = 3 };

typedef struct {
  int kind;
  void *h;
} Handle;

typedef struct {
  napi_threadsafe_function tsfn;
} Instance;

// ---- helpers -----------------------------------------------------------------------------------

static napi_value num(napi_env env, double d) {
  napi_value v;
  napi_create_double(env, d, &v);
  return v;
}

static napi_value str(napi_env env, const char *s) {
  napi_value v;
  napi_create_string_utf8(env, s ? s : "", NAPI_AUTO_LENGTH, &v);
  return v;
}

static int args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < want) {
    napi_throw_type_error(env, NULL, "haven_rbd: missing arguments");
    return 0;
  }
  return 1;
}

static int64_t i64(napi_env env, napi_value v) {
  int64_t out = 0;
  napi_get_value_int64(env, v, &out);
  return out;
}

// A string argument copied into buf; null or undefined gives NULL (e.g. "no snapshot").
static const char *cstr(napi_env env, napi_value v, char *buf, size_t len) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t != napi_string) return NULL;
  size_t n = 0;
  napi_get_value_string_utf8(env, v, buf, len, &n);
  return buf;
}

static void handle_free(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data); // the librados/librbd object is closed explicitly by its owner, never by the GC
}

// realloc that frees the old block when it fails (a failed grow leaks nothing): NULL then.
static void *grow(void *p, size_t bytes) {
  void *q = realloc(p, bytes);
  if (!q) free(p);
  return q;
}

static napi_value wrap(napi_env env, int kind, void *h) {
  Handle *x = malloc(sizeof(Handle));
  if (!x) {
    napi_throw_error(env, NULL, "haven_rbd: out of memory");
    return NULL;
  }
  x->kind = kind;
  x->h = h;
  napi_value v;
  napi_create_external(env, x, handle_free, NULL, &v);
  return v;
}

static Handle *unwrap_handle(napi_env env, napi_value v, int kind) {
  void *p = NULL;
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_external) napi_get_value_external(env, v, &p);
  Handle *x = p;
  if (!x || x->kind != kind || !x->h) {
    napi_throw_error(env, "EBADF", "haven_rbd: handle is closed or of the wrong kind");
    return NULL;
  }
  return x;
}

static void *unwrap(napi_env env, napi_value v, int kind) {
  Handle *x = unwrap_handle(env, v, kind);
  return x ? x->h : NULL;
}

#define NAME_MAX_LEN 512

// ---- completions -------------------------------------------------------------------------------

// On the JS thread: result (bytes for a read, 0 or -errno) to onComplete(id, result).
static void call_js(napi_env env, napi_value cb, void *context, void *data) {
  (void)context;
  rbd_completion_t c = data;
  double id = (double)(uintptr_t)rbd_aio_get_arg(c);
  double ret = (double)rbd_aio_get_return_value(c);
  rbd_aio_release(c);
  if (!env) return; // tearing down
  napi_value global, argv[2];
  napi_get_global(env, &global);
  argv[0] = num(env, id);
  argv[1] = num(env, ret);
  napi_call_function(env, global, cb, 2, argv, NULL);
}

static Instance *instance(napi_env env) {
  Instance *inst = NULL;
  napi_get_instance_data(env, (void **)&inst);
  return inst;
}

// Every completion carries the request id as its argument; the tsfn is global per environment,
// kept in a static for librbd's threads (one Node environment uses the addon: the main thread).
static napi_threadsafe_function g_tsfn;

// On a librbd thread: queue the completion for the JS thread.
static void completion_cb(rbd_completion_t c, void *arg) {
  (void)arg;
  if (napi_call_threadsafe_function(g_tsfn, c, napi_tsfn_nonblocking) != napi_ok) rbd_aio_release(c);
}

// init(onComplete): once, before any request.
static napi_value Init_(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!args(env, info, 1, argv)) return NULL;
  Instance *inst = instance(env);
  if (inst->tsfn) return NULL;
  napi_value name = str(env, "haven_rbd.complete");
  napi_create_threadsafe_function(env, argv[0], NULL, name, 0, 1, NULL, NULL, NULL, call_js, &inst->tsfn);
  napi_unref_threadsafe_function(env, inst->tsfn); // ref()'d while requests are in flight
  g_tsfn = inst->tsfn;
  return NULL;
}

static napi_value Ref(napi_env env, napi_callback_info info) {
  (void)info;
  napi_ref_threadsafe_function(env, instance(env)->tsfn);
  return NULL;
}

static napi_value Unref(napi_env env, napi_callback_info info) {
  (void)info;
  napi_unref_threadsafe_function(env, instance(env)->tsfn);
  return NULL;
}

static napi_value Strerror(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!args(env, info, 1, argv)) return NULL;
  int e = (int)i64(env, argv[0]);
  return str(env, strerror(e < 0 ? -e : e));
}

static rbd_completion_t completion(double id) {
  rbd_completion_t c = NULL;
  if (rbd_aio_create_completion((void *)(uintptr_t)id, completion_cb, &c) < 0) return NULL;
  return c;
}

// Queues a request: 0, or -errno when librbd refused it at once (no completion will come).
static napi_value queued(napi_env env, rbd_completion_t c, int r) {
  if (r < 0 && c) rbd_aio_release(c);
  return num(env, r < 0 ? r : 0);
}

static int bytes_of(napi_env env, napi_value v, void **data, size_t *len) {
  bool is;
  napi_is_typedarray(env, v, &is);
  if (!is) {
    napi_throw_type_error(env, NULL, "haven_rbd: expected a Uint8Array");
    return 0;
  }
  napi_typedarray_type t;
  napi_value ab;
  size_t off;
  napi_get_typedarray_info(env, v, &t, len, data, &ab, &off);
  return 1;
}

// read(image, buf, offset, id)
static napi_value Read(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!args(env, info, 4, argv)) return NULL;
  rbd_image_t img = unwrap(env, argv[0], K_IMAGE);
  void *data;
  size_t len;
  if (!img || !bytes_of(env, argv[1], &data, &len)) return NULL;
  rbd_completion_t c = completion((double)i64(env, argv[3]));
  if (!c) return num(env, -ENOMEM);
  return queued(env, c, rbd_aio_read(img, (uint64_t)i64(env, argv[2]), len, data, c));
}

#define MAX_IOV 64

// writev(image, buffers[], offset, id)
static napi_value Writev(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!args(env, info, 4, argv)) return NULL;
  rbd_image_t img = unwrap(env, argv[0], K_IMAGE);
  if (!img) return NULL;
  uint32_t n = 0;
  napi_get_array_length(env, argv[1], &n);
  if (n == 0 || n > MAX_IOV) return num(env, -EINVAL);
  struct iovec iov[MAX_IOV];
  for (uint32_t i = 0; i < n; i++) {
    napi_value b;
    napi_get_element(env, argv[1], i, &b);
    if (!bytes_of(env, b, &iov[i].iov_base, &iov[i].iov_len)) return NULL;
  }
  rbd_completion_t c = completion((double)i64(env, argv[3]));
  if (!c) return num(env, -ENOMEM);
  int r = n == 1 ? rbd_aio_write(img, (uint64_t)i64(env, argv[2]), iov[0].iov_len, iov[0].iov_base, c)
                 : rbd_aio_writev(img, iov, (int)n, (uint64_t)i64(env, argv[2]), c);
  return queued(env, c, r);
}

// flush(image, id)
static napi_value Flush(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!args(env, info, 2, argv)) return NULL;
  rbd_image_t img = unwrap(env, argv[0], K_IMAGE);
  if (!img) return NULL;
  rbd_completion_t c = completion((double)i64(env, argv[1]));
  if (!c) return num(env, -ENOMEM);
  return queued(env, c, rbd_aio_flush(img, c));
}

// discard(image, offset, length, id)
static napi_value Discard(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!args(env, info, 4, argv)) return NULL;
  rbd_image_t img = unwrap(env, argv[0], K_IMAGE);
  if (!img) return NULL;
  rbd_completion_t c = completion((double)i64(env, argv[3]));
  if (!c) return num(env, -ENOMEM);
  return queued(env, c, rbd_aio_discard(img, (uint64_t)i64(env, argv[1]), (uint64_t)i64(env, argv[2]), c));
}

// writeZeroes(image, offset, length, thick, id)
static napi_value WriteZeroes(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!args(env, info, 5, argv)) return NULL;
  rbd_image_t img = unwrap(env, argv[0], K_IMAGE);
  if (!img) return NULL;
  bool thick = false;
  napi_get_value_bool(env, argv[3], &thick);
  rbd_completion_t c = completion((double)i64(env, argv[4]));
  if (!c) return num(env, -ENOMEM);
  int r = rbd_aio_write_zeroes(img, (uint64_t)i64(env, argv[1]), (size_t)i64(env, argv[2]), c,
                               thick ? RBD_WRITE_ZEROES_FLAG_THICK_PROVISION : 0, 0);
  return queued(env, c, r);
}

// ---- connecting (on the thread pool) ----------------------------------------------------------

typedef struct {
  napi_async_work work;
  napi_ref callback;
  char conf[4096];
  double mount_timeout;
  double osd_timeout;
  rados_t cluster;
  int err;
} ConnectJob;

static int set_opt(rados_t c, const char *k, const char *v) { return rados_conf_set(c, k, v); }

static void connect_execute(napi_env env, void *data) {
  (void)env;
  ConnectJob *j = data;
  rados_t c = NULL;
  int r = rados_create(&c, NULL);
  if (r < 0) {
    j->err = r;
    return;
  }
  char t[32], o[32];
  snprintf(t, sizeof t, "%g", j->mount_timeout);
  snprintf(o, sizeof o, "%g", j->osd_timeout);
  if ((r = rados_conf_read_file(c, j->conf)) < 0 || (r = set_opt(c, "client_mount_timeout", t)) < 0 ||
      (r = set_opt(c, "rados_mon_op_timeout", t)) < 0 || (r = set_opt(c, "rados_osd_op_timeout", o)) < 0 ||
      // Every completed write is on the OSDs (no client cache): a FLUSH has nothing left to do,
      // and a snapshot or a switch of pools never races a write-back.
      (r = set_opt(c, "rbd_cache", "false")) < 0 ||
      // Writes go from the caller's buffer, not from a copy (librbd's default copies every write):
      // the NBD server keeps a write's payload alive and unchanged until its completion, and
      // librbd delays the completion until it no longer references the buffer.
      (r = set_opt(c, "rbd_disable_zero_copy_writes", "false")) < 0 ||
      // A discard always leaves zeroes, also where it covers part of an object.
      (r = set_opt(c, "rbd_skip_partial_discard", "false")) < 0 || (r = set_opt(c, "log_to_stderr", "false")) < 0 ||
      (r = set_opt(c, "err_to_stderr", "false")) < 0 || (r = rados_connect(c)) < 0) {
    rados_shutdown(c);
    j->err = r;
    return;
  }
  j->cluster = c;
  j->err = 0;
}

static void connect_complete(napi_env env, napi_status status, void *data) {
  ConnectJob *j = data;
  napi_value cb, global, argv[2];
  napi_get_reference_value(env, j->callback, &cb);
  napi_get_global(env, &global);
  int err = status == napi_ok ? j->err : -ECANCELED;
  argv[0] = num(env, err);
  if (err == 0) argv[1] = wrap(env, K_CLUSTER, j->cluster);
  else napi_get_null(env, &argv[1]);
  napi_delete_reference(env, j->callback);
  napi_delete_async_work(env, j->work);
  free(j);
  napi_call_function(env, global, cb, 2, argv, NULL);
}

static ConnectJob *connect_job(napi_env env, napi_value *argv) {
  ConnectJob *j = calloc(1, sizeof(ConnectJob));
  size_t n;
  napi_get_value_string_utf8(env, argv[0], j->conf, sizeof j->conf, &n);
  napi_get_value_double(env, argv[1], &j->mount_timeout);
  napi_get_value_double(env, argv[2], &j->osd_timeout);
  return j;
}

// connect(confPath, mountTimeoutSeconds, osdTimeoutSeconds, callback(err, cluster))
static napi_value Connect(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!args(env, info, 4, argv)) return NULL;
  ConnectJob *j = connect_job(env, argv);
  napi_create_reference(env, argv[3], 1, &j->callback);
  napi_create_async_work(env, NULL, str(env, "haven_rbd.connect"), connect_execute, connect_complete, j,
                         &j->work);
  napi_queue_async_work(env, j->work);
  return NULL;
}

// connectSync(confPath, mountTimeoutSeconds, osdTimeoutSeconds): the cluster, or -errno.
static napi_value ConnectSync(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!args(env, info, 3, argv)) return NULL;
  ConnectJob *j = connect_job(env, argv);
  connect_execute(env, j);
  napi_value out = j->err == 0 ? wrap(env, K_CLUSTER, j->cluster) : num(env, j->err);
  free(j);
  return out;
}

static napi_value Shutdown(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!args(env, info, 1, argv)) return NULL;
  Handle *x = unwrap_handle(env, argv[0], K_CLUSTER);
  if (!x) return NULL;
  rados_shutdown(x->h);
  x->h = NULL;
  return NULL;
}

// monCommand(cluster, json): [ret, output, status]
static napi_value MonCommand(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!args(env, info, 2, argv)) return NULL;
  rados_t c = unwrap(env, argv[0], K_CLUSTER);
  if (!c) return NULL;
  char cmd[4096];
  const char *cmds[1] = {cstr(env, argv[1], cmd, sizeof cmd)};
  char *out = NULL, *st = NULL;
  size_t outlen = 0, stlen = 0;
  int r = rados_mon_command(c, cmds, 1, "", 0, &out, &outlen, &st, &stlen);
  napi_value arr, o, s;
  napi_create_array_with_length(env, 3, &arr);
  napi_create_string_utf8(env, out ? out : "", outlen, &o);
  napi_create_string_utf8(env, st ? st : "", stlen, &s);
  napi_set_element(env, arr, 0, num(env, r));
  napi_set_element(env, arr, 1, o);
  napi_set_element(env, arr, 2, s);
  if (out) rados_buffer_free(out);
  if (st) rados_buffer_free(st);
  return arr;
}

// clusterStat(cluster): [kb, kbUsed, kbAvail, objects], or -errno.
static napi_value ClusterStat(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!args(env, info, 1, argv)) return NULL;
  rados_t c = unwrap(env, argv[0], K_CLUSTER);
  if (!c) return NULL;
  struct rados_cluster_stat_t s;
  int r = rados_cluster_stat(c, &s);
  if (r < 0) return num(env, r);
  napi_value arr;
  napi_create_array_with_length(env, 4, &arr);
  napi_set_element(env, arr, 0, num(env, (double)s.kb));
  napi_set_element(env, arr, 1, num(env, (double)s.kb_used));
  napi_set_element(env, arr, 2, num(env, (double)s.kb_avail));
  napi_set_element(env, arr, 3, num(env, (double)s.num_objects));
  return arr;
}

// ioctx(cluster, pool): the I/O context, or -errno (-ENOENT: no such pool).
static napi_value Ioctx(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!args(env, info, 2, argv)) return NULL;
  rados_t c = unwrap(env, argv[0], K_CLUSTER);
  if (!c) return NULL;
  char pool[NAME_MAX_LEN];
  rados_ioctx_t io;
  int r = rados_ioctx_create(c, cstr(env, argv[1], pool, sizeof pool), &io);
  return r < 0 ? num(env, r) : wrap(env, K_IOCTX, io);
}

static napi_value IoctxDestroy(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!args(env, info, 1, argv)) return NULL;
  Handle *x = unwrap_handle(env, argv[0], K_IOCTX);
  if (!x) return NULL;
  rados_ioctx_destroy(x->h);
  x->h = NULL;
  return NULL;
}

// ---- images ------------------------------------------------------------------------------------

// list(ioctx): [[name, id], ...], or -errno.
static napi_value List(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!args(env, info, 1, argv)) return NULL;
  rados_ioctx_t io = unwrap(env, argv[0], K_IOCTX);
  if (!io) return NULL;
  size_t max = 64;
  rbd_image_spec_t *specs = NULL;
  int r;
  for (;;) {
    specs = grow(specs, max * sizeof *specs);
    if (!specs) return num(env, -ENOMEM);
    r = rbd_list2(io, specs, &max);
    if (r != -ERANGE) break;
  }
  if (r < 0) {
    free(specs);
    return num(env, r);
  }
  napi_value arr;
  napi_create_array_with_length(env, max, &arr);
  for (size_t i = 0; i < max; i++) {
    napi_value e;
    napi_create_array_with_length(env, 2, &e);
    napi_set_element(env, e, 0, str(env, specs[i].name));
    napi_set_element(env, e, 1, str(env, specs[i].id));
    napi_set_element(env, arr, (uint32_t)i, e);
  }
  rbd_image_spec_list_cleanup(specs, max);
  free(specs);
  return arr;
}

// create(ioctx, name, size, order): 0 or -errno. Format 2, the pool's default features.
static napi_value Create(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!args(env, info, 4, argv)) return NULL;
  rados_ioctx_t io = unwrap(env, argv[0], K_IOCTX);
  if (!io) return NULL;
  char name[NAME_MAX_LEN];
  rbd_image_options_t opts;
  rbd_image_options_create(&opts);
  rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_FORMAT, 2);
  int64_t order = i64(env, argv[3]);
  if (order > 0) rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_ORDER, (uint64_t)order);
  int r = rbd_create4(io, cstr(env, argv[1], name, sizeof name), (uint64_t)i64(env, argv[2]), opts);
  rbd_image_options_destroy(opts);
  return num(env, r);
}

// clone(parentIoctx, parent, snapshot, childIoctx, child): 0 or -errno. Clone v2 (no protection).
static napi_value Clone(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  if (!args(env, info, 5, argv)) return NULL;
  rados_ioctx_t pio = unwrap(env, argv[0], K_IOCTX);
  rados_ioctx_t cio = pio ? unwrap(env, argv[3], K_IOCTX) : NULL;
  if (!cio) return NULL;
  char p[NAME_MAX_LEN], s[NAME_MAX_LEN], c[NAME_MAX_LEN];
  rbd_image_options_t opts;
  rbd_image_options_create(&opts);
  rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_FORMAT, 2);
  rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_CLONE_FORMAT, 2);
  int r = rbd_clone3(pio, cstr(env, argv[1], p, sizeof p), cstr(env, argv[2], s, sizeof s), cio,
                     cstr(env, argv[4], c, sizeof c), opts);
  rbd_image_options_destroy(opts);
  return num(env, r);
}

static napi_value Remove(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!args(env, info, 2, argv)) return NULL;
  rados_ioctx_t io = unwrap(env, argv[0], K_IOCTX);
  if (!io) return NULL;
  char name[NAME_MAX_LEN];
  return num(env, rbd_remove(io, cstr(env, argv[1], name, sizeof name)));
}

static napi_value Rename(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!args(env, info, 3, argv)) return NULL;
  rados_ioctx_t io = unwrap(env, argv[0], K_IOCTX);
  if (!io) return NULL;
  char a[NAME_MAX_LEN], b[NAME_MAX_LEN];
  return num(env, rbd_rename(io, cstr(env, argv[1], a, sizeof a), cstr(env, argv[2], b, sizeof b)));
}

// open(ioctx, name, snapshot|null, readOnly): the image, or -errno.
static napi_value Open(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!args(env, info, 4, argv)) return NULL;
  rados_ioctx_t io = unwrap(env, argv[0], K_IOCTX);
  if (!io) return NULL;
  char name[NAME_MAX_LEN], snap[NAME_MAX_LEN];
  const char *n = cstr(env, argv[1], name, sizeof name);
  const char *s = cstr(env, argv[2], snap, sizeof snap);
  bool ro = false;
  napi_get_value_bool(env, argv[3], &ro);
  rbd_image_t img;
  int r = ro || s ? rbd_open_read_only(io, n, &img, s) : rbd_open(io, n, &img, NULL);
  return r < 0 ? num(env, r) : wrap(env, K_IMAGE, img);
}

// close(image): 0 or -errno. The caller waits for its requests first.
static napi_value CloseImage(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!args(env, info, 1, argv)) return NULL;
  Handle *x = unwrap_handle(env, argv[0], K_IMAGE);
  if (!x) return NULL;
  int r = rbd_close(x->h);
  x->h = NULL;
  return num(env, r);
}

// stat(image): [size, id, createdSeconds, objectSize], or -errno.
static napi_value Stat(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!args(env, info, 1, argv)) return NULL;
  rbd_image_t img = unwrap(env, argv[0], K_IMAGE);
  if (!img) return NULL;
  rbd_image_info_t st;
  int r = rbd_stat(img, &st, sizeof st);
  if (r < 0) return num(env, r);
  char id[128] = "";
  rbd_get_id(img, id, sizeof id);
  struct timespec ts = {0, 0};
  rbd_get_create_timestamp(img, &ts);
  napi_value arr;
  napi_create_array_with_length(env, 4, &arr);
  napi_set_element(env, arr, 0, num(env, (double)st.size));
  napi_set_element(env, arr, 1, str(env, id));
  napi_set_element(env, arr, 2, num(env, (double)ts.tv_sec + ts.tv_nsec / 1e9));
  napi_set_element(env, arr, 3, num(env, (double)st.obj_size));
  return arr;
}

// parent(image): [pool, image, snapshot], null for an image that is no clone, or -errno.
static napi_value Parent(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!args(env, info, 1, argv)) return NULL;
  rbd_image_t img = unwrap(env, argv[0], K_IMAGE);
  if (!img) return NULL;
  rbd_linked_image_spec_t p;
  rbd_snap_spec_t s;
  int r = rbd_get_parent(img, &p, &s);
  if (r == -ENOENT) {
    napi_value nul;
    napi_get_null(env, &nul);
    return nul;
  }
  if (r < 0) return num(env, r);
  napi_value arr;
  napi_create_array_with_length(env, 3, &arr);
  napi_set_element(env, arr, 0, str(env, p.pool_name));
  napi_set_element(env, arr, 1, str(env, p.image_name));
  napi_set_element(env, arr, 2, str(env, s.name));
  rbd_linked_image_spec_cleanup(&p);
  rbd_snap_spec_cleanup(&s);
  return arr;
}

static napi_value Resize(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!args(env, info, 2, argv)) return NULL;
  rbd_image_t img = unwrap(env, argv[0], K_IMAGE);
  if (!img) return NULL;
  return num(env, rbd_resize(img, (uint64_t)i64(env, argv[1])));
}

// snapCreate / snapRemove / snapRollback(image, name): 0 or -errno.
#define SNAP_OP(fn, call)                                                       \
  static napi_value fn(napi_env env, napi_callback_info info) {                 \
    napi_value argv[2];                                                         \
    if (!args(env, info, 2, argv)) return NULL;                                 \
    rbd_image_t img = unwrap(env, argv[0], K_IMAGE);                            \
    if (!img) return NULL;                                                      \
    char name[NAME_MAX_LEN];                                                    \
    return num(env, call(img, cstr(env, argv[1], name, sizeof name)));          \
  }
SNAP_OP(SnapCreate, rbd_snap_create)
SNAP_OP(SnapRemove, rbd_snap_remove)
SNAP_OP(SnapRollback, rbd_snap_rollback)
SNAP_OP(MetaRemove, rbd_metadata_remove)

// snapList(image): [[id, name, size, createdSeconds], ...], or -errno.
static napi_value SnapList(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!args(env, info, 1, argv)) return NULL;
  rbd_image_t img = unwrap(env, argv[0], K_IMAGE);
  if (!img) return NULL;
  int max = 16, r;
  rbd_snap_info_t *snaps = NULL;
  for (;;) {
    snaps = grow(snaps, (size_t)max * sizeof *snaps);
    if (!snaps) return num(env, -ENOMEM);
    r = rbd_snap_list(img, snaps, &max);
    if (r != -ERANGE) break;
  }
  if (r < 0) {
    free(snaps);
    return num(env, r);
  }
  napi_value arr;
  napi_create_array_with_length(env, (size_t)r, &arr);
  for (int i = 0; i < r; i++) {
    struct timespec ts = {0, 0};
    rbd_snap_get_timestamp(img, snaps[i].id, &ts);
    napi_value e;
    napi_create_array_with_length(env, 4, &e);
    napi_set_element(env, e, 0, num(env, (double)snaps[i].id));
    napi_set_element(env, e, 1, str(env, snaps[i].name));
    napi_set_element(env, e, 2, num(env, (double)snaps[i].size));
    napi_set_element(env, e, 3, num(env, (double)ts.tv_sec + ts.tv_nsec / 1e9));
    napi_set_element(env, arr, (uint32_t)i, e);
  }
  rbd_snap_list_end(snaps);
  free(snaps);
  return arr;
}

// children(image opened at a snapshot): [[pool, image, inTrash], ...], or -errno.
static napi_value Children(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!args(env, info, 1, argv)) return NULL;
  rbd_image_t img = unwrap(env, argv[0], K_IMAGE);
  if (!img) return NULL;
  size_t max = 16;
  rbd_linked_image_spec_t *specs = NULL;
  int r;
  for (;;) {
    specs = grow(specs, max * sizeof *specs);
    if (!specs) return num(env, -ENOMEM);
    r = rbd_list_children3(img, specs, &max);
    if (r != -ERANGE) break;
  }
  if (r < 0) {
    free(specs);
    return num(env, r);
  }
  napi_value arr;
  napi_create_array_with_length(env, max, &arr);
  for (size_t i = 0; i < max; i++) {
    napi_value e, t;
    napi_create_array_with_length(env, 3, &e);
    napi_get_boolean(env, specs[i].trash, &t);
    napi_set_element(env, e, 0, str(env, specs[i].pool_name));
    napi_set_element(env, e, 1, str(env, specs[i].image_name));
    napi_set_element(env, e, 2, t);
    napi_set_element(env, arr, (uint32_t)i, e);
  }
  rbd_linked_image_spec_list_cleanup(specs, max);
  free(specs);
  return arr;
}

// metaSet(image, key, value): 0 or -errno.
static napi_value MetaSet(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!args(env, info, 3, argv)) return NULL;
  rbd_image_t img = unwrap(env, argv[0], K_IMAGE);
  if (!img) return NULL;
  char k[NAME_MAX_LEN], v[4096];
  return num(env, rbd_metadata_set(img, cstr(env, argv[1], k, sizeof k), cstr(env, argv[2], v, sizeof v)));
}

// metaList(image): [key, value, key, value, ...], or -errno.
static napi_value MetaList(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!args(env, info, 1, argv)) return NULL;
  rbd_image_t img = unwrap(env, argv[0], K_IMAGE);
  if (!img) return NULL;
  size_t klen = 1024, vlen = 4096;
  char *keys = NULL, *vals = NULL;
  int r;
  for (;;) {
    keys = grow(keys, klen);
    vals = grow(vals, vlen);
    if (!keys || !vals) {
      free(keys);
      free(vals);
      return num(env, -ENOMEM);
    }
    r = rbd_metadata_list(img, "", 0, keys, &klen, vals, &vlen);
    if (r != -ERANGE) break;
  }
  napi_value arr;
  if (r < 0) {
    arr = num(env, r);
  } else {
    napi_create_array(env, &arr);
    uint32_t i = 0;
    size_t ko = 0, vo = 0;
    while (ko < klen && vo < vlen && keys[ko]) {
      napi_set_element(env, arr, i++, str(env, keys + ko));
      napi_set_element(env, arr, i++, str(env, vals + vo));
      ko += strlen(keys + ko) + 1;
      vo += strlen(vals + vo) + 1;
    }
  }
  free(keys);
  free(vals);
  return arr;
}

// ---- diff_iterate (on the thread pool) --------------------------------------------------------

typedef struct {
  napi_async_work work;
  napi_ref callback;
  rbd_image_t img;
  char from[NAME_MAX_LEN];
  int has_from;
  uint64_t off, len;
  uint8_t whole_object, include_parent;
  double *ext; // offset, length, exists
  size_t n, cap;
  int err;
} DiffJob;

static int diff_cb(uint64_t off, size_t len, int exists, void *arg) {
  DiffJob *j = arg;
  if (j->n + 3 > j->cap) {
    size_t cap = j->cap ? j->cap * 2 : 768;
    double *e = realloc(j->ext, cap * sizeof(double));
    if (!e) return -ENOMEM;
    j->ext = e;
    j->cap = cap;
  }
  j->ext[j->n++] = (double)off;
  j->ext[j->n++] = (double)len;
  j->ext[j->n++] = exists ? 1 : 0;
  return 0;
}

static void diff_execute(napi_env env, void *data) {
  (void)env;
  DiffJob *j = data;
  j->err = rbd_diff_iterate2(j->img, j->has_from ? j->from : NULL, j->off, j->len, j->include_parent,
                             j->whole_object, diff_cb, j);
}

static void diff_complete(napi_env env, napi_status status, void *data) {
  DiffJob *j = data;
  napi_value cb, global, argv[2];
  napi_get_reference_value(env, j->callback, &cb);
  napi_get_global(env, &global);
  int err = status == napi_ok ? (j->err < 0 ? j->err : 0) : -ECANCELED;
  argv[0] = num(env, err);
  napi_value ab;
  void *p;
  size_t n = err == 0 ? j->n : 0;
  napi_create_arraybuffer(env, n * sizeof(double), &p, &ab);
  if (n) memcpy(p, j->ext, n * sizeof(double));
  napi_create_typedarray(env, napi_float64_array, n, ab, 0, &argv[1]);
  napi_delete_reference(env, j->callback);
  napi_delete_async_work(env, j->work);
  free(j->ext);
  free(j);
  napi_call_function(env, global, cb, 2, argv, NULL);
}

// diff(image, fromSnapshot|null, offset, length, wholeObject, includeParent, callback(err, Float64Array))
// The extents that changed since the snapshot (or exist at all, with null), as triples of
// offset, length, exists (0: now reads as zeroes).
static napi_value Diff(napi_env env, napi_callback_info info) {
  napi_value argv[7];
  if (!args(env, info, 7, argv)) return NULL;
  rbd_image_t img = unwrap(env, argv[0], K_IMAGE);
  if (!img) return NULL;
  DiffJob *j = calloc(1, sizeof(DiffJob));
  j->img = img;
  j->has_from = cstr(env, argv[1], j->from, sizeof j->from) != NULL;
  j->off = (uint64_t)i64(env, argv[2]);
  j->len = (uint64_t)i64(env, argv[3]);
  bool w = false, p = false;
  napi_get_value_bool(env, argv[4], &w);
  napi_get_value_bool(env, argv[5], &p);
  j->whole_object = w;
  j->include_parent = p;
  napi_create_reference(env, argv[6], 1, &j->callback);
  napi_create_async_work(env, NULL, str(env, "haven_rbd.diff"), diff_execute, diff_complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return NULL;
}

// diffSync(image, fromSnapshot|null, offset, length, wholeObject, includeParent): the same
// triples on the calling thread (the allocated bytes a listing shows), or -errno.
static napi_value DiffSync(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  if (!args(env, info, 6, argv)) return NULL;
  rbd_image_t img = unwrap(env, argv[0], K_IMAGE);
  if (!img) return NULL;
  DiffJob j;
  memset(&j, 0, sizeof j);
  j.img = img;
  j.has_from = cstr(env, argv[1], j.from, sizeof j.from) != NULL;
  j.off = (uint64_t)i64(env, argv[2]);
  j.len = (uint64_t)i64(env, argv[3]);
  bool w = false, p = false;
  napi_get_value_bool(env, argv[4], &w);
  napi_get_value_bool(env, argv[5], &p);
  j.whole_object = w;
  j.include_parent = p;
  diff_execute(env, &j);
  napi_value out;
  if (j.err < 0) {
    out = num(env, j.err);
  } else {
    napi_value ab;
    void *d;
    napi_create_arraybuffer(env, j.n * sizeof(double), &d, &ab);
    if (j.n) memcpy(d, j.ext, j.n * sizeof(double));
    napi_create_typedarray(env, napi_float64_array, j.n, ab, 0, &out);
  }
  free(j.ext);
  return out;
}

// ---- removing an image (on the thread pool: it deletes every object) -------------------------

typedef struct {
  napi_async_work work;
  napi_ref callback;
  rados_ioctx_t io;
  char name[NAME_MAX_LEN];
  int err;
} RemoveJob;

static void remove_execute(napi_env env, void *data) {
  (void)env;
  RemoveJob *j = data;
  j->err = rbd_remove(j->io, j->name);
}

static void remove_complete(napi_env env, napi_status status, void *data) {
  RemoveJob *j = data;
  napi_value cb, global, argv[1];
  napi_get_reference_value(env, j->callback, &cb);
  napi_get_global(env, &global);
  argv[0] = num(env, status == napi_ok ? j->err : -ECANCELED);
  napi_delete_reference(env, j->callback);
  napi_delete_async_work(env, j->work);
  free(j);
  napi_call_function(env, global, cb, 1, argv, NULL);
}

// removeAsync(ioctx, name, callback(err))
static napi_value RemoveAsync(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!args(env, info, 3, argv)) return NULL;
  rados_ioctx_t io = unwrap(env, argv[0], K_IOCTX);
  if (!io) return NULL;
  RemoveJob *j = calloc(1, sizeof(RemoveJob));
  j->io = io;
  cstr(env, argv[1], j->name, sizeof j->name);
  napi_create_reference(env, argv[2], 1, &j->callback);
  napi_create_async_work(env, NULL, str(env, "haven_rbd.remove"), remove_execute, remove_complete, j, &j->work);
  napi_queue_async_work(env, j->work);
  return NULL;
}

// ---- module ------------------------------------------------------------------------------------

static void instance_free(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data);
}

#define FN(name, fn) {name, NULL, fn, NULL, NULL, NULL, napi_default, NULL}

static napi_value ModuleInit(napi_env env, napi_value exports) {
  Instance *inst = calloc(1, sizeof(Instance));
  napi_set_instance_data(env, inst, instance_free, NULL);
  napi_property_descriptor props[] = {
      FN("init", Init_),          FN("ref", Ref),
      FN("unref", Unref),         FN("strerror", Strerror),
      FN("connect", Connect),     FN("connectSync", ConnectSync),
      FN("shutdown", Shutdown),   FN("monCommand", MonCommand),
      FN("clusterStat", ClusterStat), FN("ioctx", Ioctx),
      FN("ioctxDestroy", IoctxDestroy), FN("list", List),
      FN("create", Create),       FN("clone", Clone),
      FN("remove", Remove),       FN("rename", Rename),
      FN("open", Open),           FN("close", CloseImage),
      FN("stat", Stat),           FN("parent", Parent),
      FN("resize", Resize),       FN("snapCreate", SnapCreate),
      FN("snapRemove", SnapRemove), FN("snapRollback", SnapRollback),
      FN("snapList", SnapList),   FN("children", Children),
      FN("metaSet", MetaSet),     FN("metaRemove", MetaRemove),
      FN("metaList", MetaList),   FN("read", Read),
      FN("writev", Writev),       FN("flush", Flush),
      FN("discard", Discard),     FN("writeZeroes", WriteZeroes),
      FN("diff", Diff),           FN("diffSync", DiffSync),
      FN("removeAsync", RemoveAsync),
  };
  napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, ModuleInit)
