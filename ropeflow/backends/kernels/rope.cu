// ropeflow CUDA kernels, loaded at run time by ropeflow/backends/_cupy.py through cupy.RawModule
// (NVRTC, no --use_fast_math). Compile-checked without a GPU by tests/test_cuda_source.py:
//     nvcc -ptx -arch=sm_80 -std=c++14 -DROPEFLOW_INSTANTIATE rope.cu
//
// Thread decomposition (the Numba kernels use the same indexing): one thread per (row i, frequency j),
// j fastest, so a warp writes consecutive columns. Each thread computes one sin/cos pair and writes it to
// columns j and j + half of both tables: the tables are (rows, 2 * half), C-contiguous.
//
// Accuracy rules (DESIGN 1.5):
// * the float32 angle is __fmul_rn(float(p), inv_freq[j]) so no FMA contraction can change its rounding;
//   it is then bit-identical to NumPy's and Numba's float32 product;
// * sincosf/sincos are the accurate CUDA math routines (no __sinf/__cosf intrinsics, whose error grows
//   with the argument); exact mode takes the angle and the sin/cos in double and rounds once.

// Reference precision: float32 angle, float32 sincosf, float32 tables.
extern "C" __global__ void rope_table_ref(const float* __restrict__ inv_freq, long long start,
                                          long long rows, int half, float divisor, float scale,
                                          int use_divisor, int use_scale, float* __restrict__ cos_out,
                                          float* __restrict__ sin_out) {
    const long long total = rows * (long long)half;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const long long i = idx / half;
        const int j = (int)(idx - i * half);
        float t = (float)(start + i);
        if (use_divisor) t = __fdiv_rn(t, divisor);
        const float angle = __fmul_rn(t, inv_freq[j]);
        float s, c;
        sincosf(angle, &s, &c);
        if (use_scale) {
            c = __fmul_rn(c, scale);
            s = __fmul_rn(s, scale);
        }
        const long long row = i * 2LL * half;
        cos_out[row + j] = c;
        cos_out[row + j + half] = c;
        sin_out[row + j] = s;
        sin_out[row + j + half] = s;
    }
}

// Exact precision: double angle and sincos, rounded once to the table dtype (float or double).
template <typename Out>
__global__ void rope_table_exact(const double* __restrict__ inv_freq, long long start, long long rows,
                                 int half, double divisor, double scale, Out* __restrict__ cos_out,
                                 Out* __restrict__ sin_out) {
    const long long total = rows * (long long)half;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const long long i = idx / half;
        const int j = (int)(idx - i * half);
        const double t = __ddiv_rn((double)(start + i), divisor);
        const double angle = __dmul_rn(t, inv_freq[j]);
        double s, c;
        sincos(angle, &s, &c);
        const Out cv = (Out)__dmul_rn(c, scale);
        const Out sv = (Out)__dmul_rn(s, scale);
        const long long row = i * 2LL * half;
        cos_out[row + j] = cv;
        cos_out[row + j + half] = cv;
        sin_out[row + j] = sv;
        sin_out[row + j + half] = sv;
    }
}

// ------------------------------------------------------------------------------------------- rotation
// One launch rotates up to two tensors (q and k, whose head counts may differ). Work item = (row, t) with
// row = (batch, head, seq) of a tensor and t < half a rotated pair (t >= half: a pass-through channel past
// rotary_dim). Tensors are addressed through element strides, so slices of a fused qkv buffer need no copy.
// Math in double, rounded once to T. LAYOUT: 0 "half", 1 "interleaved", 2 "deepseek" (a compile-time flag).
struct RopeTensor {
    const void* in;
    void* out;
    long long rows;                          // batch * heads * seq
    long long heads;
    long long in_sb, in_sh, in_ss, in_sd;    // element strides of the input (batch, head, seq, dim)
    long long out_sb, out_sh, out_ss, out_sd;
};

// float16 without <cuda_fp16.h> (so NVRTC needs no toolkit headers): raw bits, converted by PTX cvt,
// from double with one round-to-nearest-even.
struct rope_half {
    unsigned short bits;
};

__device__ __forceinline__ double rope_load(const float* p) { return (double)*p; }
__device__ __forceinline__ double rope_load(const double* p) { return *p; }
__device__ __forceinline__ double rope_load(const rope_half* p) {
    double v;
    asm("cvt.f64.f16 %0, %1;" : "=d"(v) : "h"(p->bits));
    return v;
}
__device__ __forceinline__ void rope_store(float* p, double v) { *p = (float)v; }
__device__ __forceinline__ void rope_store(double* p, double v) { *p = v; }
__device__ __forceinline__ void rope_store(rope_half* p, double v) {
    unsigned short bits;
    asm("cvt.rn.f16.f64 %0, %1;" : "=h"(bits) : "d"(v));
    p->bits = bits;
}

// Kernel arguments are plain pointers and scalars (no struct by value), in this order per tensor:
// in, out, rows, heads, in strides (b, h, s, d), out strides (b, h, s, d).
#define ROPE_TENSOR_PARAMS(n)                                                                                 \
    const void *n##_in, void *n##_out, long long n##_rows, long long n##_heads, long long n##_isb,            \
        long long n##_ish, long long n##_iss, long long n##_isd, long long n##_osb, long long n##_osh,         \
        long long n##_oss, long long n##_osd
#define ROPE_TENSOR_MAKE(n) \
    RopeTensor{n##_in, n##_out, n##_rows, n##_heads, n##_isb, n##_ish, n##_iss, n##_isd, n##_osb, n##_osh, n##_oss, n##_osd}

template <typename T, typename TT, int LAYOUT>
__global__ void rope_apply(ROPE_TENSOR_PARAMS(qa), ROPE_TENSOR_PARAMS(kb), const TT* __restrict__ cos_table,
                           const TT* __restrict__ sin_table, long long table_stride,
                           const long long* __restrict__ positions, long long pos_sb, long long pos_ss,
                           long long seq, int half, int rotary_dim, int head_dim, int copy_rest, double sign) {
    const RopeTensor a = ROPE_TENSOR_MAKE(qa);
    const RopeTensor b = ROPE_TENSOR_MAKE(kb);
    const long long per_row = half + (copy_rest ? head_dim - rotary_dim : 0);
    const long long total = (a.rows + b.rows) * per_row;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        long long row = idx / per_row;
        const int t = (int)(idx - row * per_row);
        const RopeTensor& x = row < a.rows ? a : b;
        if (row >= a.rows) row -= a.rows;
        const long long per_batch = x.heads * seq;
        const long long bi = row / per_batch;
        const long long hi = (row - bi * per_batch) / seq;
        const long long si = row - bi * per_batch - hi * seq;
        const T* in = (const T*)x.in + bi * x.in_sb + hi * x.in_sh + si * x.in_ss;
        T* out = (T*)x.out + bi * x.out_sb + hi * x.out_sh + si * x.out_ss;
        if (t >= half) {  // pass-through channel
            const int k = rotary_dim + (t - half);
            out[k * x.out_sd] = in[k * x.in_sd];
            continue;
        }
        const long long p = positions[bi * pos_sb + si * pos_ss];
        const double c = (double)cos_table[p * table_stride + t];
        const double s = sign * (double)sin_table[p * table_stride + t];
        const int i1 = LAYOUT == 0 ? t : 2 * t;
        const int i2 = LAYOUT == 0 ? t + half : 2 * t + 1;
        const int o1 = LAYOUT == 1 ? 2 * t : t;
        const int o2 = LAYOUT == 1 ? 2 * t + 1 : t + half;
        const double x1 = rope_load(in + i1 * x.in_sd);
        const double x2 = rope_load(in + i2 * x.in_sd);
        rope_store(out + o1 * x.out_sd, x1 * c - x2 * s);
        rope_store(out + o2 * x.out_sd, x2 * c + x1 * s);
    }
}

#ifdef ROPEFLOW_INSTANTIATE
// Explicit instances for an offline nvcc check; at run time NVRTC instantiates them by name_expressions.
template __global__ void rope_table_exact<float>(const double*, long long, long long, int, double, double,
                                                 float*, float*);
template __global__ void rope_table_exact<double>(const double*, long long, long long, int, double, double,
                                                  double*, double*);
#define ROPE_APPLY_INSTANCE(T, TT, L)                                                                       \
    template __global__ void rope_apply<T, TT, L>(ROPE_TENSOR_PARAMS(qa), ROPE_TENSOR_PARAMS(kb), const TT*,   \
                                                  const TT*, long long, const long long*, long long, long long, \
                                                  long long, int, int, int, int, double);
ROPE_APPLY_INSTANCE(float, float, 0)
ROPE_APPLY_INSTANCE(float, float, 1)
ROPE_APPLY_INSTANCE(float, float, 2)
ROPE_APPLY_INSTANCE(double, double, 0)
ROPE_APPLY_INSTANCE(double, double, 1)
ROPE_APPLY_INSTANCE(double, double, 2)
ROPE_APPLY_INSTANCE(rope_half, float, 0)
ROPE_APPLY_INSTANCE(rope_half, float, 1)
ROPE_APPLY_INSTANCE(rope_half, float, 2)
#endif
