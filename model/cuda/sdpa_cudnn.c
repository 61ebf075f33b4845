// model/cuda/sdpa_cudnn.c: the cuDNN attention path (sdpa_cudnn.h): a plan (sdpa_plan.h) turned into cuDNN
// backend descriptors (tensors, the SDPA forward / backward operation, the operation graph), engine configs from
// the heuristics (the first deterministic one that finalizes), an execution plan and workspace per shape, and a
// variant pack per call binding our buffers. C on cuDNN's C API and the CUDA runtime's; built only with the
// toolkit (Makefile: nvcc found), with USE_CUDNN when cudnn_graph.h and libcudnn were found; never emulated.
//
// What has run: without a GPU, the descriptor plumbing (every tensor, both operations and both graphs are created
// and finalized on the host by tests/test_sdpa_plan.c; cudnnCreate itself needs a device). What has never run:
// the heuristics, execution plans and execution (need a GPU: dev/cuda/check.sh runs tests/test_cuda_sdpa.c).
//
// Causal mask: cuDNN 9.19 (the version this was written against) has no mask attribute on its SDPA operation;
// the causal mask is a 9.21 SDPA subgraph (sdpa_plan.h). That subgraph is not written here (its attributes are not
// in the 9.19 headers, and it could not be tested), so SDPA_CUDNN_CAUSAL_WRITTEN is 0 and a causal plan -- what
// the trainer needs -- is refused with that reason whatever the library's version; --attention auto then runs our
// kernels. Non-causal plans run (the GPU check of the plumbing against a plain reference).
//
// Determinism: the backend promises same inputs -> same bits; engine configs whose engine carries the
// NONDETERMINISTIC numerical note are skipped (cuDNN's SDPA backward may accumulate dQ with atomics).
#include "sdpa_cudnn.h"
#include "../../common.h"
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define SDPA_CUDNN_CAUSAL_WRITTEN 0  // 1 once the >= 9.21 mask subgraph is added to build_graph()

#ifndef USE_CUDNN
// ---- a toolkit without cuDNN: the path reports itself absent
long sdpa_cudnn_runtime_version(void) { return 0; }
long sdpa_cudnn_version(void) { return 0; }
const char* sdpa_cudnn_host_check(const SdpaPlan* plan, int bwd, int* n) { if (n) *n = 0; return "SKIP: built without cuDNN (no cudnn_graph.h / libcudnn found)"; }
const char* sdpa_cudnn_forward(const SdpaPlan* p, void* o, float* l, const void* q, const void* kv, const void* a) { return "built without cuDNN"; }
const char* sdpa_cudnn_backward(const SdpaPlan* p, void* dq, void* dkv, void* da, const void* dout, const void* q,
                                const void* kv, const void* a, const void* out, const float* lse) { return "built without cuDNN"; }
void cudnn_attention_forward(void* out, float* lse, float* maxlogit, const void* q, const void* kv, const void* a, MlaShape s) {
    fatal("cudnn_attention_forward: this binary was built without cuDNN");
}
void cudnn_attention_backward(void* dq, void* dkv, void* da, const void* dout, const void* q, const void* kv,
                              const void* a, const void* out, const float* lse, MlaShape s) {
    fatal("cudnn_attention_backward: this binary was built without cuDNN");
}
int ops_cuda_choose_attention(const char* mode, MlaShape shape, char* why, size_t n) {
    if (!strcmp(mode, "cudnn")) { snprintf(why, n, "this binary was built without cuDNN (no cudnn_graph.h / libcudnn at build time)"); return -1; }
    snprintf(why, n, "own kernels (%s)", !strcmp(mode, "own") ? "--attention own" : "auto: this binary was built without cuDNN");
    ops_cuda_set_attention(0);
    return 0;
}
#else
#include <cudnn_graph.h>
#include <cuda_runtime_api.h>

// the graph's and execution plan's handle attributes are deprecated in favour of a device-property descriptor,
// but are still how a 9.x graph is bound to the handle (and its stream); one place, so silenced here
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

long sdpa_cudnn_runtime_version(void) { return (long)cudnnGetVersion(); }
long sdpa_cudnn_version(void) {
    long rt = sdpa_cudnn_runtime_version();
    return rt < CUDNN_VERSION ? rt : CUDNN_VERSION;  // a feature needs both the headers and the library
}

// ----------------------------------------------------------------------------
// errors: the first failing call is kept as one line (call, status, cuDNN's own message)

typedef struct {
    char msg[400];
    int failed;
} Err;

static int ck(Err* e, cudnnStatus_t st, const char* what, const char* name) {
    if (st == CUDNN_STATUS_SUCCESS || e->failed) return !e->failed && st == CUDNN_STATUS_SUCCESS;
    char last[256] = "";
    cudnnGetLastErrorString(last, sizeof(last));
    snprintf(e->msg, sizeof(e->msg), "%s of %s: %s%s%s", what, name, cudnnGetErrorString(st), last[0] ? ": " : "", last);
    e->failed = 1;
    return 0;
}

// descriptors made for one graph, destroyed together
#define SDPA_MAX_DESC 32
typedef struct {
    cudnnBackendDescriptor_t d[SDPA_MAX_DESC];
    int n;
} DescList;

static cudnnBackendDescriptor_t create(DescList* l, Err* e, cudnnBackendDescriptorType_t type, const char* name) {
    cudnnBackendDescriptor_t d = NULL;
    if (e->failed) return NULL;
    if (l->n >= SDPA_MAX_DESC) { snprintf(e->msg, sizeof(e->msg), "too many descriptors"); e->failed = 1; return NULL; }
    if (!ck(e, cudnnBackendCreateDescriptor(type, &d), "cudnnBackendCreateDescriptor", name)) return NULL;
    l->d[l->n++] = d;
    return d;
}

static void destroy_all(DescList* l) {
    for (int i = l->n - 1; i >= 0; i--)
        if (l->d[i]) cudnnBackendDestroyDescriptor(l->d[i]);
    l->n = 0;
}

static void set(Err* e, cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t attr, cudnnBackendAttributeType_t type,
                int64_t count, const void* value, const char* name) {
    if (e->failed) return;
    ck(e, cudnnBackendSetAttribute(d, attr, type, count, value), "cudnnBackendSetAttribute", name);
}

static void link_desc(Err* e, cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t attr, cudnnBackendDescriptor_t v,
                      const char* name) {
    set(e, d, attr, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v, name);
}

static cudnnBackendDescriptor_t make_tensor(DescList* l, Err* e, const SdpaTensor* t, int* n_finalized) {
    cudnnBackendDescriptor_t d = create(l, e, CUDNN_BACKEND_TENSOR_DESCRIPTOR, t->name);
    cudnnDataType_t dt = t->dtype == SDPA_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
    bool is_virtual = t->is_virtual != 0, by_value = t->by_value != 0;
    set(e, d, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &t->uid, t->name);
    set(e, d, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &dt, t->name);
    set(e, d, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, t->dims, t->name);
    set(e, d, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, t->strides, t->name);
    set(e, d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &t->alignment, t->name);
    set(e, d, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual, t->name);
    set(e, d, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &by_value, t->name);
    if (!e->failed && ck(e, cudnnBackendFinalize(d), "cudnnBackendFinalize", t->name) && n_finalized) (*n_finalized)++;
    return d;
}

// The SDPA operation (forward or backward) of the plan and its operation graph (bound to `handle` when given;
// without one the graph still finalizes on the host). Returns the graph, or NULL with e set.
static cudnnBackendDescriptor_t build_graph(DescList* l, Err* e, const SdpaPlan* p, int bwd, cudnnHandle_t handle,
                                            int* n_finalized) {
    const SdpaTensor* ts = bwd ? p->bwd : p->fwd;
    const int nt = bwd ? SDPA_BWD_N : SDPA_FWD_N;
    cudnnBackendDescriptor_t td[SDPA_BWD_N];
    for (int i = 0; i < nt; i++) td[i] = make_tensor(l, e, &ts[i], n_finalized);
    cudnnBackendDescriptor_t op;
    if (!bwd) {
        op = create(l, e, CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR, "SDPA forward");
        static const cudnnBackendAttributeName_t a[SDPA_FWD_N] = {
            CUDNN_ATTR_OPERATION_SDPA_FWD_QDESC, CUDNN_ATTR_OPERATION_SDPA_FWD_KDESC,
            CUDNN_ATTR_OPERATION_SDPA_FWD_VDESC, CUDNN_ATTR_OPERATION_SDPA_FWD_ODESC,
            CUDNN_ATTR_OPERATION_SDPA_FWD_STATSDESC, CUDNN_ATTR_OPERATION_SDPA_FWD_SCALEDESC};
        for (int i = 0; i < SDPA_FWD_N; i++) link_desc(e, op, a[i], td[i], ts[i].name);
    } else {
        op = create(l, e, CUDNN_BACKEND_OPERATION_SDPA_BWD_DESCRIPTOR, "SDPA backward");
        static const cudnnBackendAttributeName_t a[SDPA_BWD_N] = {
            CUDNN_ATTR_OPERATION_SDPA_BWD_QDESC, CUDNN_ATTR_OPERATION_SDPA_BWD_KDESC,
            CUDNN_ATTR_OPERATION_SDPA_BWD_VDESC, CUDNN_ATTR_OPERATION_SDPA_BWD_ODESC,
            CUDNN_ATTR_OPERATION_SDPA_BWD_STATSDESC, CUDNN_ATTR_OPERATION_SDPA_BWD_SCALEDESC,
            CUDNN_ATTR_OPERATION_SDPA_BWD_DODDESC, CUDNN_ATTR_OPERATION_SDPA_BWD_DQDESC,
            CUDNN_ATTR_OPERATION_SDPA_BWD_DKDESC, CUDNN_ATTR_OPERATION_SDPA_BWD_DVDESC};
        for (int i = 0; i < SDPA_BWD_N; i++) link_desc(e, op, a[i], td[i], ts[i].name);
    }
    // (the >= 9.21 causal mask goes here: an operation graph of one DIAGONAL_BAND_MASK on the scores, linked as the
    // operation's SUBGRAPH with its input / output uids; see the file comment)
    const char* opname = bwd ? "SDPA backward" : "SDPA forward";
    if (!e->failed && ck(e, cudnnBackendFinalize(op), "cudnnBackendFinalize", opname) && n_finalized) (*n_finalized)++;
    cudnnBackendDescriptor_t graph = create(l, e, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
    set(e, graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op, "operation graph");
    if (handle) set(e, graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle, "operation graph");
    if (!e->failed && ck(e, cudnnBackendFinalize(graph), "cudnnBackendFinalize", "operation graph") && n_finalized)
        (*n_finalized)++;
    return e->failed ? NULL : graph;
}

const char* sdpa_cudnn_host_check(const SdpaPlan* p, int bwd, int* n_finalized) {
    static Err e;
    memset(&e, 0, sizeof(e));
    if (n_finalized) *n_finalized = 0;
    DescList l = {{0}, 0};
    build_graph(&l, &e, p, bwd, NULL, n_finalized);
    destroy_all(&l);
    return e.failed ? e.msg : NULL;
}

// ----------------------------------------------------------------------------
// run time: one handle on the backend's stream, an execution plan per (shape, mask, direction), one workspace,
// and the K / dK scratch

typedef struct {
    MlaShape shape;
    int causal, bwd;
    DescList descs;                 // the graph's descriptors and the execution plan (kept alive together)
    cudnnBackendDescriptor_t exec;  // NULL: not built
    int64_t workspace_bytes;
} CachedPlan;

#define SDPA_CACHE 8
static CachedPlan cache[SDPA_CACHE];
static int cache_n;
static cudnnHandle_t handle;
static void *workspace, *kmat, *dkmat;
static size_t workspace_cap, kmat_cap, dkmat_cap;

static void cuda_ok(cudaError_t err, const char* what) {
    if (err != cudaSuccess) fatal("CUDA error %s in %s (cuDNN attention)", cudaGetErrorString(err), what);
}

// a growable device buffer (grown only; the old one freed after the stream's queued work is done with it)
static void* grow(void** buf, size_t* cap, size_t bytes) {
    if (bytes <= *cap) return *buf;
    cudaStream_t stream = (cudaStream_t)ops_cuda_stream();
    if (*buf) {
        cuda_ok(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
        cuda_ok(cudaFree(*buf), "cudaFree");
    }
    cuda_ok(cudaMalloc(buf, bytes), "cudaMalloc");
    *cap = bytes;
    return *buf;
}

static int same_shape(MlaShape a, MlaShape b) {
    return a.B == b.B && a.T == b.T && a.H == b.H && a.nope == b.nope && a.rope == b.rope && a.dv == b.dv &&
           a.kv_lora == b.kv_lora;
}

static int engine_is_deterministic(Err* e, cudnnBackendDescriptor_t cfg) {
    DescList l = {{0}, 0};
    cudnnBackendDescriptor_t engine = create(&l, e, CUDNN_BACKEND_ENGINE_DESCRIPTOR, "engine");
    int64_t n = 0;
    cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
    int ok = 1;
    if (!e->failed && cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n,
                                               &engine) == CUDNN_STATUS_SUCCESS &&
        cudnnBackendGetAttribute(engine, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                 CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &n, notes) == CUDNN_STATUS_SUCCESS) {
        for (int64_t i = 0; i < n; i++)
            if (notes[i] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC) ok = 0;
    } else {
        ok = 0;  // cannot tell: not taken
    }
    destroy_all(&l);
    return ok;
}

// the execution plan for (plan's shape and mask, direction): built on first use, then cached
static CachedPlan* get_plan(const SdpaPlan* p, int bwd, Err* e) {
    for (int i = 0; i < cache_n; i++)
        if (cache[i].exec && cache[i].bwd == bwd && cache[i].causal == p->causal && same_shape(cache[i].shape, p->shape))
            return &cache[i];
    if (!handle) {
        if (!ck(e, cudnnCreate(&handle), "cudnnCreate", "handle")) return NULL;
        if (!ck(e, cudnnSetStream(handle, (cudaStream_t)ops_cuda_stream()), "cudnnSetStream", "handle")) return NULL;
    }
    CachedPlan* c = &cache[cache_n < SDPA_CACHE ? cache_n : SDPA_CACHE - 1];
    if (cache_n == SDPA_CACHE) { destroy_all(&c->descs); c->exec = NULL; }  // the last slot is recycled
    memset(c, 0, sizeof(*c));
    cudnnBackendDescriptor_t graph = build_graph(&c->descs, e, p, bwd, handle, NULL);
    cudnnBackendDescriptor_t heur = create(&c->descs, e, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "heuristics");
    cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    link_desc(e, heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph, "heuristics");
    set(e, heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristics");
    if (!e->failed) ck(e, cudnnBackendFinalize(heur), "cudnnBackendFinalize", "heuristics");
    int64_t n_cfg = 0;
    if (!e->failed)
        ck(e, cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n_cfg, NULL),
           "cudnnBackendGetAttribute", "heuristics results");
    if (n_cfg > SDPA_MAX_DESC / 2) n_cfg = SDPA_MAX_DESC / 2;
    cudnnBackendDescriptor_t cfgs[SDPA_MAX_DESC / 2];
    DescList cfg_list = {{0}, 0};
    for (int64_t i = 0; i < n_cfg; i++) cfgs[i] = create(&cfg_list, e, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine config");
    if (!e->failed && n_cfg > 0)
        ck(e, cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n_cfg, &n_cfg,
                                       cfgs), "cudnnBackendGetAttribute", "heuristics results");
    int tried = 0, nondet = 0;
    for (int64_t i = 0; i < n_cfg && !e->failed && !c->exec; i++) {
        if (!engine_is_deterministic(e, cfgs[i])) { nondet++; continue; }
        cudnnBackendDescriptor_t ex = NULL;
        if (!ck(e, cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &ex), "create", "execution plan")) break;
        tried++;
        if (cudnnBackendSetAttribute(ex, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &handle) == CUDNN_STATUS_SUCCESS &&
            cudnnBackendSetAttribute(ex, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                     &cfgs[i]) == CUDNN_STATUS_SUCCESS &&
            cudnnBackendFinalize(ex) == CUDNN_STATUS_SUCCESS) {
            // kept with the plan: the execution plan and its engine config (10 tensors, op, graph, heuristics,
            // config, plan: room to spare)
            c->exec = ex;
            c->descs.d[c->descs.n++] = cfgs[i];
            c->descs.d[c->descs.n++] = ex;
            cfg_list.d[i] = NULL;
        } else {
            cudnnBackendDestroyDescriptor(ex);
        }
    }
    destroy_all(&cfg_list);  // the configs not taken
    if (!e->failed && !c->exec) {
        snprintf(e->msg, sizeof(e->msg), "no cuDNN engine for the SDPA %s of this shape on this GPU (%lld configs from "
                 "the heuristics, %d nondeterministic skipped, %d failed to finalize)", bwd ? "backward" : "forward",
                 (long long)n_cfg, nondet, tried);
        e->failed = 1;
    }
    if (e->failed) { destroy_all(&c->descs); c->exec = NULL; return NULL; }
    ck(e, cudnnBackendGetAttribute(c->exec, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, NULL,
                                   &c->workspace_bytes), "cudnnBackendGetAttribute", "workspace size");
    if (e->failed) { destroy_all(&c->descs); c->exec = NULL; return NULL; }
    c->shape = p->shape;
    c->causal = p->causal;
    c->bwd = bwd;
    if (cache_n < SDPA_CACHE) cache_n++;
    return c;
}

// binds every tensor of the graph to its buffer (+ offset) and runs the plan on the backend's stream
static void execute(Err* e, const SdpaPlan* p, int bwd, CachedPlan* c, void* const bufs[SDPA_BUF_COUNT]) {
    const SdpaTensor* ts = bwd ? p->bwd : p->fwd;
    const int nt = bwd ? SDPA_BWD_N : SDPA_FWD_N;
    int64_t uids[SDPA_BWD_N];
    void* ptrs[SDPA_BWD_N];
    for (int i = 0; i < nt; i++) {
        uids[i] = ts[i].uid;
        ptrs[i] = (char*)bufs[ts[i].buffer] + ts[i].byte_offset;
        if (!ts[i].by_value && ((uintptr_t)ptrs[i] % (uintptr_t)ts[i].alignment)) {
            snprintf(e->msg, sizeof(e->msg), "%s (buffer %s + %zu bytes) is not %lld-byte aligned", ts[i].name,
                     sdpa_buffer_name(ts[i].buffer), ts[i].byte_offset, (long long)ts[i].alignment);
            e->failed = 1;
            return;
        }
    }
    void* ws = grow(&workspace, &workspace_cap, c->workspace_bytes > 0 ? (size_t)c->workspace_bytes : 256);
    DescList l = {{0}, 0};
    cudnnBackendDescriptor_t pack = create(&l, e, CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "variant pack");
    set(e, pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, nt, uids, "variant pack");
    set(e, pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, nt, ptrs, "variant pack");
    set(e, pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws, "variant pack");
    if (!e->failed) ck(e, cudnnBackendFinalize(pack), "cudnnBackendFinalize", "variant pack");
    if (!e->failed) ck(e, cudnnBackendExecute(handle, c->exec, pack), "cudnnBackendExecute", bwd ? "SDPA backward" : "SDPA forward");
    destroy_all(&l);
}

const char* sdpa_cudnn_forward(const SdpaPlan* p, void* out, float* lse, const void* q, const void* kv, const void* a) {
    static Err e;
    memset(&e, 0, sizeof(e));
    if (p->unsupported) return p->unsupported;
    CachedPlan* c = get_plan(p, 0, &e);
    if (!c) return e.msg;
    void* k = grow(&kmat, &kmat_cap, p->kmat_bytes);
    cuda_sdpa_build_k(k, kv, a, p->shape);
    void* bufs[SDPA_BUF_COUNT] = {0};
    float scale = p->scale;
    bufs[SDPA_BUF_Q] = (void*)q; bufs[SDPA_BUF_KV] = (void*)kv; bufs[SDPA_BUF_KMAT] = k;
    bufs[SDPA_BUF_OUT] = out; bufs[SDPA_BUF_LSE] = lse; bufs[SDPA_BUF_SCALE] = &scale;
    execute(&e, p, 0, c, bufs);
    return e.failed ? e.msg : NULL;
}

const char* sdpa_cudnn_backward(const SdpaPlan* p, void* dq, void* dkv, void* da, const void* dout, const void* q,
                                const void* kv, const void* a, const void* out, const float* lse) {
    static Err e;
    memset(&e, 0, sizeof(e));
    if (p->unsupported) return p->unsupported;
    CachedPlan* c = get_plan(p, 1, &e);
    if (!c) return e.msg;
    void* k = grow(&kmat, &kmat_cap, p->kmat_bytes);  // rebuilt: other layers' forwards used the scratch since
    void* dk = grow(&dkmat, &dkmat_cap, p->kmat_bytes);
    cuda_sdpa_build_k(k, kv, a, p->shape);
    void* bufs[SDPA_BUF_COUNT] = {0};
    float scale = p->scale;
    bufs[SDPA_BUF_Q] = (void*)q; bufs[SDPA_BUF_KV] = (void*)kv; bufs[SDPA_BUF_KMAT] = k;
    bufs[SDPA_BUF_OUT] = (void*)out; bufs[SDPA_BUF_LSE] = (void*)lse; bufs[SDPA_BUF_SCALE] = &scale;
    bufs[SDPA_BUF_DOUT] = (void*)dout; bufs[SDPA_BUF_DQ] = dq; bufs[SDPA_BUF_DKV] = dkv; bufs[SDPA_BUF_DKMAT] = dk;
    execute(&e, p, 1, c, bufs);
    if (!e.failed) cuda_sdpa_split_dk(dkv, da, dk, p->shape);  // dK -> dkv's k-nope columns and da's rope key
    return e.failed ? e.msg : NULL;
}

// ----------------------------------------------------------------------------
// the op pair the CUDA table runs when the choice is cuDNN (always causal)

static const SdpaPlan* causal_plan(MlaShape s) {
    static SdpaPlan p;
    static int have = 0;
    if (!have || !same_shape(p.shape, s)) {
        sdpa_plan_make(&p, s, 1, sdpa_cudnn_version());
        have = 1;
    }
    return &p;
}

void cudnn_attention_forward(void* out, float* lse, float* maxlogit, const void* q, const void* kv, const void* a,
                             MlaShape s) {
    if (s.B <= 0 || s.T <= 0 || s.H <= 0) return;
    const char* err = sdpa_cudnn_forward(causal_plan(s), out, lse, q, kv, a);
    if (err) fatal("cudnn_attention_forward (B=%d T=%d H=%d dqk=%d dv=%d): %s", s.B, s.T, s.H, s.nope + s.rope, s.dv, err);
    // cuDNN 9.19 returns no row maximum: QK-Clip's exact max logit from our kernel
    if (maxlogit) cuda_attention_maxlogit(maxlogit, q, kv, a, s);
}

void cudnn_attention_backward(void* dq, void* dkv, void* da, const void* dout, const void* q, const void* kv,
                              const void* a, const void* out, const float* lse, MlaShape s) {
    if (s.B <= 0 || s.T <= 0 || s.H <= 0) return;
    const char* err = sdpa_cudnn_backward(causal_plan(s), dq, dkv, da, dout, q, kv, a, out, lse);
    if (err) fatal("cudnn_attention_backward (B=%d T=%d H=%d dqk=%d dv=%d): %s", s.B, s.T, s.H, s.nope + s.rope, s.dv, err);
}

int ops_cuda_choose_attention(const char* mode, MlaShape shape, char* why, size_t n) {
    const long v = sdpa_cudnn_version();
    const int own = !strcmp(mode, "own");
    if (own) {
        ops_cuda_set_attention(0);
        snprintf(why, n, "own kernels (--attention own)");
        return 0;
    }
    SdpaPlan p;
    static Err e;  // holds the reason past the block that fills it
    memset(&e, 0, sizeof(e));
    const char* reason = NULL;
    if (!sdpa_plan_make(&p, shape, 1, v)) reason = p.unsupported;
    else if (!SDPA_CUDNN_CAUSAL_WRITTEN) reason = "the causal mask through cuDNN's SDPA subgraph (>= 9.21) is not written yet";
    if (!reason) {
        // the engines are known only now, on the GPU: build both plans once (they stay cached)
        if (!get_plan(&p, 0, &e) || !get_plan(&p, 1, &e)) reason = e.msg;
    }
    if (!reason) {
        ops_cuda_set_attention(1);
        snprintf(why, n, "cuDNN %ld.%ld SDPA (--attention %s)", v / 10000, v / 100 % 100, mode);
        return 1;
    }
    ops_cuda_set_attention(0);
    if (!strcmp(mode, "cudnn")) {
        snprintf(why, n, "cuDNN %ld.%ld cannot run this attention: %s", v / 10000, v / 100 % 100, reason);
        return -1;
    }
    snprintf(why, n, "own kernels (auto: cuDNN %ld.%ld: %s)", v / 10000, v / 100 % 100, reason);
    return 0;
}
#endif
