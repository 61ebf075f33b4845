// model/cuda/ops_cuda.cu: the CUDA backend's op table. Memory is device memory (cudaMalloc); activations and the
// compute copy of the weights are bf16; fp32 master weights, gradients and optimizer state stay fp32. The table
// is handed out by ops_cuda_get() only when a usable GPU is visible; the handles are created then.
//
// Deterministic: everything here (copies, memset, the fp32 -> bf16 and bf16 -> fp32 conversions are element-wise).
#include "cuda_common.cuh"
#include "sdpa_cudnn.h"

cudaStream_t cuda_stream = NULL;
cublasHandle_t cuda_cublas = NULL;
void* cuda_lt_workspace = NULL;
size_t cuda_lt_workspace_bytes = 0;
int cuda_num_sms = 0;

// ----------------------------------------------------------------------------
// memory

static void* cuda_malloc_zero(size_t bytes) {
    void* p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes ? bytes : 256);
    if (err != cudaSuccess) {
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        fatal("out of GPU memory allocating %zu bytes (%s; %.2f of %.2f GB free)", bytes, cudaGetErrorString(err),
              free_b / 1e9, total_b / 1e9);
    }
    cudaCheck(cudaMemsetAsync(p, 0, bytes ? bytes : 256, cuda_stream));
    cudaCheck(cudaStreamSynchronize(cuda_stream));
    return p;
}

static void cuda_free_mem(void* p) {
    if (!p) return;
    cudaCheck(cudaStreamSynchronize(cuda_stream));  // queued work may still use it
    cudaCheck(cudaFree(p));
}

static void cuda_zero(void* p, size_t bytes) {
    if (bytes) cudaCheck(cudaMemsetAsync(p, 0, bytes, cuda_stream));
}

// host <- device; returns when the data is on the host
static void cuda_to_host(void* host, const void* src, size_t bytes) {
    if (!bytes) return;
    cudaCheck(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, cuda_stream));
    cudaCheck(cudaStreamSynchronize(cuda_stream));
}

// device <- host; returns when the copy is done, so the caller may free or reuse the host buffer at once
static void cuda_to_device(void* dst, const void* host, size_t bytes) {
    if (!bytes) return;
    cudaCheck(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, cuda_stream));
    cudaCheck(cudaStreamSynchronize(cuda_stream));
}

static void cuda_sync(void) { cudaCheck(cudaStreamSynchronize(cuda_stream)); }
static void cuda_mem_info(size_t* free_bytes, size_t* total_bytes) { cudaCheck(cudaMemGetInfo(free_bytes, total_bytes)); }

// ----------------------------------------------------------------------------
// conversions

__global__ void f32_to_bf16_kernel(bf16* out, const float* in, size_t n) {
    GRID_STRIDE_LOOP(i, n) out[i] = f2bf(in[i]);
}

__global__ void bf16_to_f32_kernel(float* out, const bf16* in, size_t n) {
    GRID_STRIDE_LOOP(i, n) out[i] = bf2f(in[i]);
}

// fp32 master -> bf16 compute copy (round to nearest even)
static void cuda_weights_to_compute(void* compute, const float* master, size_t n) {
    if (!n) return;
    f32_to_bf16_kernel<<<grid_for(n, 256), 256, 0, cuda_stream>>>((bf16*)compute, master, n);
    cudaCheckLaunch();
}

// n bf16 activations -> fp32 host values (widened on the device, then copied)
static CudaScratch act_scratch;
static void cuda_act_to_host_f32(float* host, const void* src, size_t n) {
    if (!n) return;
    float* tmp = (float*)cuda_scratch(&act_scratch, n * sizeof(float));
    bf16_to_f32_kernel<<<grid_for(n, 256), 256, 0, cuda_stream>>>(tmp, (const bf16*)src, n);
    cudaCheckLaunch();
    cuda_to_host(host, tmp, n * sizeof(float));
}

// ----------------------------------------------------------------------------
// the table

// not const: ops_cuda_set_attention swaps the attention pair (--attention, chosen once at start-up)
static Ops ops_cuda_table = {
    .name = "cuda",
    .act_bytes = sizeof(bf16),
    .separate_compute_weights = 1,
    .malloc = cuda_malloc_zero,
    .free = cuda_free_mem,
    .zero = cuda_zero,
    .to_host = cuda_to_host,
    .to_device = cuda_to_device,
    .act_to_host_f32 = cuda_act_to_host_f32,
    .sync = cuda_sync,
    .mem_info = cuda_mem_info,
    .weights_to_compute = cuda_weights_to_compute,
#define OP(ret, name, params) .name = cuda_##name,
#include "../ops_list.h"
#undef OP
};

extern "C" void ops_cuda_set_attention(int use_cudnn) {
    ops_cuda_table.attention_forward = use_cudnn ? cudnn_attention_forward : cuda_attention_forward;
    ops_cuda_table.attention_backward = use_cudnn ? cudnn_attention_backward : cuda_attention_backward;
}

// ----------------------------------------------------------------------------
// selection

// Which GPU this process uses: with several ranks on one node, rank i takes GPU (local rank i) mod count. The
// launchers' local-rank variables say which (Open MPI, MPICH/Hydra, Slurm, torchrun-style); else GPU 0.
static int pick_device(int count) {
    const char* vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "LOCAL_RANK", NULL};
    for (int i = 0; vars[i]; i++) {
        const char* v = getenv(vars[i]);
        if (v && *v) return atoi(v) % count;
    }
    return 0;
}

static const char* unavailable_reason = "not checked yet";

extern "C" int ops_cuda_built(void) { return 1; }

extern "C" void* ops_cuda_stream(void) { return (void*)cuda_stream; }

extern "C" const char* ops_cuda_unavailable_reason(void) { return unavailable_reason; }

extern "C" const Ops* ops_cuda_get(void) {
    static int state = 0;  // 0: not asked yet, 1: ready, -1: no usable GPU
    if (state) return state > 0 ? &ops_cuda_table : NULL;
    state = -1;
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count <= 0) {
        // no driver, no device: not an error, the caller falls back to (or reports) the CPU
        static char why[256];
        snprintf(why, sizeof(why), "no usable CUDA GPU (cudaGetDeviceCount: %s)",
                 err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
        unavailable_reason = why;
        cudaGetLastError();  // reset the runtime's last-error state so no later check reports this one
        return NULL;
    }
    int dev = pick_device(count);
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, dev));
    if (prop.major < 8) {
        // the kernels are built for sm_90 and compute_80 PTX, and bf16 arithmetic needs sm_80
        unavailable_reason = "the GPU is older than compute capability 8.0 (bf16 needs Ampere or newer)";
        fprintf(stderr, "cuda: %s has compute capability %d.%d; the CUDA backend needs 8.0 or newer\n", prop.name,
                prop.major, prop.minor);
        return NULL;
    }
    cudaCheck(cudaSetDevice(dev));
    cuda_num_sms = prop.multiProcessorCount;
    // a blocking stream: should anything ever use the legacy default stream (a plain cudaMemcpy), it stays ordered
    // with our work instead of racing it
    cudaCheck(cudaStreamCreate(&cuda_stream));
    cublasCheck(cublasCreate(&cuda_cublas));
    cublasCheck(cublasSetStream(cuda_cublas, cuda_stream));
    // CUBLAS_DEFAULT_MATH: fp32 GEMMs (Newton-Schulz) stay true fp32 (no TF32); bf16 GemmEx uses the tensor cores
    cublasCheck(cublasSetMathMode(cuda_cublas, CUBLAS_DEFAULT_MATH));
    // one fixed workspace for cuBLAS (so its algorithm choice, and hence its results, do not vary with what memory
    // happens to be free)
    cuda_lt_workspace_bytes = (size_t)32 << 20;
    cudaCheck(cudaMalloc(&cuda_lt_workspace, cuda_lt_workspace_bytes));
    cublasCheck(cublasSetWorkspace(cuda_cublas, cuda_lt_workspace, cuda_lt_workspace_bytes));
    unavailable_reason = NULL;
    state = 1;
    return &ops_cuda_table;
}
