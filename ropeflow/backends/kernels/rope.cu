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

#ifdef ROPEFLOW_INSTANTIATE
// Explicit instances for an offline nvcc check; at run time NVRTC instantiates them by name_expressions.
template __global__ void rope_table_exact<float>(const double*, long long, long long, int, double, double,
                                                 float*, float*);
template __global__ void rope_table_exact<double>(const double*, long long, long long, int, double, double,
                                                  double*, double*);
#endif
