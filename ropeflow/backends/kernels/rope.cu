// ropeflow CUDA kernels, loaded at run time by ropeflow/backends/_cupy.py through cupy.RawModule
// (NVRTC, options _cupy.COMPILE_OPTIONS, no --use_fast_math). Needs no toolkit header.
//
// Checked without a GPU by the test suite:
// * tests/test_cuda_source.py compiles it with nvcc to PTX (sm_80, sm_90) and reads the PTX for the
//   "fast by design" criteria, and compiles it with NVRTC exactly as CupyBackend does;
// * tests/test_cuda_host.py compiles this very file as host C++ behind tests/cuda_host/cuda_shim.h and runs
//   every kernel instance, every (block, thread) serially, with the argument tuples _cupy.py builds.
//   Device-only code (inline PTX) sits behind __CUDA_ARCH__ with exact host equivalents.
//
// Design rules
// * Every kernel is a grid-stride loop in each grid dimension it uses, without shared memory or barriers,
//   so it is correct for any grid/block shape and a serial run of every (block, thread) is exact. (The
//   table and cast kernels ignore the dimensions they do not use: extra threads repeat identical writes.)
// * No integer division (and `#pragma unroll 1` on grid-stride loops, whose unrolling would divide to
//   count trips): 2-D grids (x: columns, y: rows) for the tables; the rotation splits its row
//   index into (batch, head, seq) with precomputed 32-bit multiply-shift division (rope_div).
// * Every floating-point rounding is explicit (__fmul_rn, __dmul_rn, __dadd_rn, ...), so no FMA
//   contraction can change a result: the float32 angle is bit-identical to NumPy's and Numba's product,
//   and the rotation x1*c - x2*s is computed exactly as Numba computes it (fastmath off: no FMA).
// * sincosf/sincos are the accurate CUDA math routines (no __sinf/__cosf intrinsics, whose error grows with
//   the argument); exact mode takes the angle and the sin/cos in double and rounds once.

// ------------------------------------------------------------------------------------------- 16-bit floats
// float16 and bfloat16 without <cuda_fp16.h>/<cuda_bf16.h>: raw bits, converted from double with one
// round-to-nearest-even.
struct rope_half {
    unsigned short bits;
};
struct rope_bf16 {
    unsigned short bits;
};

// double -> IEEE binary16-like bits with MANT mantissa and EXPB exponent bits, rounded once to nearest
// even; overflow gives inf, NaN stays a quiet NaN.
template <int MANT, int EXPB>
__device__ __forceinline__ unsigned short rope_encode16(double v) {
    const int bias = (1 << (EXPB - 1)) - 1;
    const unsigned long long inf_bits = ((1ULL << EXPB) - 1ULL) << MANT;
    const int shift = 52 - MANT;
    const unsigned long long b = (unsigned long long)__double_as_longlong(v);
    const unsigned short sign = (unsigned short)((b >> 48) & 0x8000ULL);
    const unsigned long long a = b & 0x7FFFFFFFFFFFFFFFULL;
    const int e64 = (int)(a >> 52);
    const unsigned long long mant = a & ((1ULL << 52) - 1ULL);
    if (e64 == 2047) return (unsigned short)(sign | inf_bits | (mant ? (1ULL << (MANT - 1)) : 0ULL));
    const int e = e64 - 1023 + bias;
    unsigned long long h, rem, halfway;
    if (e >= 1) {
        h = ((unsigned long long)e << MANT) | (mant >> shift);
        rem = mant & ((1ULL << shift) - 1ULL);
        halfway = 1ULL << (shift - 1);
    } else if (e > -(MANT + 1)) {  // subnormal result
        const unsigned long long full = mant | (1ULL << 52);
        const int sub = shift + 1 - e;
        h = full >> sub;
        rem = full & ((1ULL << sub) - 1ULL);
        halfway = 1ULL << (sub - 1);
    } else {  // below half the smallest subnormal
        return sign;
    }
    if (rem > halfway || (rem == halfway && (h & 1ULL))) h += 1;  // a carry into the exponent is correct
    if (h > inf_bits) h = inf_bits;
    return (unsigned short)(sign | h);
}

// bits -> the exact double (host path of float16; bfloat16 uses the float shortcut below).
template <int MANT, int EXPB>
__device__ __forceinline__ double rope_decode16(unsigned short bits) {
    const int bias = (1 << (EXPB - 1)) - 1;
    const int emax = (1 << EXPB) - 1;
    const unsigned long long sign = (unsigned long long)(bits >> (MANT + EXPB)) << 63;
    const int e = (bits >> MANT) & emax;
    const unsigned long long m = bits & ((1u << MANT) - 1u);
    if (e == 0) {  // zero or subnormal: m * 2**(1 - bias - MANT), exact
        const double v = (double)m * __longlong_as_double((long long)(1023 + 1 - bias - MANT) << 52);
        return sign ? -v : v;
    }
    const unsigned long long e64 = e == emax ? 2047ULL : (unsigned long long)(e - bias + 1023);
    return __longlong_as_double((long long)(sign | (e64 << 52) | (m << (52 - MANT))));
}

__device__ __forceinline__ double rope_load(const float* p) { return (double)*p; }
__device__ __forceinline__ double rope_load(const double* p) { return *p; }
__device__ __forceinline__ double rope_load(const rope_half* p) {
#ifdef __CUDA_ARCH__
    double v;
    asm("cvt.f64.f16 %0, %1;" : "=d"(v) : "h"(p->bits));
    return v;
#else
    return rope_decode16<10, 5>(p->bits);
#endif
}
__device__ __forceinline__ double rope_load(const rope_bf16* p) {
    return (double)__int_as_float((int)((unsigned)p->bits << 16));  // bfloat16 = the top half of a float
}

__device__ __forceinline__ void rope_store(float* p, double v) { *p = __double2float_rn(v); }
__device__ __forceinline__ void rope_store(double* p, double v) { *p = v; }
__device__ __forceinline__ void rope_store(rope_half* p, double v) {
#ifdef __CUDA_ARCH__
    unsigned short bits;
    asm("cvt.rn.f16.f64 %0, %1;" : "=h"(bits) : "d"(v));
    p->bits = bits;
#else
    p->bits = rope_encode16<10, 5>(v);
#endif
}
__device__ __forceinline__ void rope_store(rope_bf16* p, double v) { p->bits = rope_encode16<7, 8>(v); }

// ------------------------------------------------------------------------------------------------ tables
// Grid x: frequency j (a thread writes columns j and j + half of both tables), grid y: row i. Tables are
// (rows, 2 * half), C-contiguous.

// Reference precision: float32 angle, its sin and cos in double rounded once to float32 (the Numba backend's
// rounding: CUDA's sincosf is within 2 ulp, not correctly rounded), float32 tables.
extern "C" __global__ void rope_table_ref(const float* __restrict__ inv_freq, long long start, long long rows,
                                          int half, float divisor, float scale, int use_divisor, int use_scale,
                                          float* __restrict__ cos_out, float* __restrict__ sin_out) {
    const long long row_stride = (long long)blockDim.y * gridDim.y;
    const int col_stride = (int)(blockDim.x * gridDim.x);
    #pragma unroll 1
    for (long long i = (long long)(blockIdx.y * blockDim.y + threadIdx.y); i < rows; i += row_stride) {
        float t = (float)(start + i);
        if (use_divisor) t = __fdiv_rn(t, divisor);
        float* crow = cos_out + i * 2LL * half;
        float* srow = sin_out + i * 2LL * half;
        #pragma unroll 1
        for (int j = (int)(blockIdx.x * blockDim.x + threadIdx.x); j < half; j += col_stride) {
            const float angle = __fmul_rn(t, inv_freq[j]);
            double sd, cd;
            sincos((double)angle, &sd, &cd);
            float s = __double2float_rn(sd), c = __double2float_rn(cd);
            if (use_scale) {
                c = __fmul_rn(c, scale);
                s = __fmul_rn(s, scale);
            }
            crow[j] = c;
            crow[j + half] = c;
            srow[j] = s;
            srow[j + half] = s;
        }
    }
}

// Exact precision: double angle and sincos, rounded once to the table dtype (float or double).
template <typename Out>
__global__ void rope_table_exact(const double* __restrict__ inv_freq, long long start, long long rows, int half,
                                 double divisor, double scale, Out* __restrict__ cos_out,
                                 Out* __restrict__ sin_out) {
    const long long row_stride = (long long)blockDim.y * gridDim.y;
    const int col_stride = (int)(blockDim.x * gridDim.x);
    #pragma unroll 1
    for (long long i = (long long)(blockIdx.y * blockDim.y + threadIdx.y); i < rows; i += row_stride) {
        const double t = __ddiv_rn((double)(start + i), divisor);
        Out* crow = cos_out + i * 2LL * half;
        Out* srow = sin_out + i * 2LL * half;
        #pragma unroll 1
        for (int j = (int)(blockIdx.x * blockDim.x + threadIdx.x); j < half; j += col_stride) {
            const double angle = __dmul_rn(t, inv_freq[j]);
            double s, c;
            sincos(angle, &s, &c);
            const double cv = __dmul_rn(c, scale);
            const double sv = __dmul_rn(s, scale);
            rope_store(crow + j, cv);
            rope_store(crow + j + half, cv);
            rope_store(srow + j, sv);
            rope_store(srow + j + half, sv);
        }
    }
}

// Table casts to 16-bit floats (the memoized float16/bfloat16 tables), rounded once from the storage
// table. src and dst are contiguous, n elements; 1-D grid-stride loop.
template <typename From, typename To>
__global__ void rope_cast(const From* __restrict__ src, To* __restrict__ dst, long long n) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    #pragma unroll 1
    for (long long i = (long long)(blockIdx.x * blockDim.x + threadIdx.x); i < n; i += stride) {
        rope_store(dst + i, (double)src[i]);
    }
}

// ---------------------------------------------------------------------------------------------- rotation
// q / k row index -> (batch, head, seq) without a division instruction: n / d == __umulhi(n, mul) >> shr
// for every n < 2**31, with (mul, shr) from _cupy.fast_divisor(d) (mul == 0 encodes d == 1).
__device__ __forceinline__ unsigned rope_div(unsigned n, unsigned mul, unsigned shr) {
    return mul ? (__umulhi(n, mul) >> shr) : n;
}

// One launch rotates q (grid z = 0) and k (z = 1; k_rows == 0 when k is absent and its pointers are null).
// Grid y: row = (batch, head, seq) of that tensor, seq fastest, or with token_major (batch, seq, head), head
// fastest, so that consecutive rows are neighbours in memory for token-major (B, S, H, D) arrays too (the
// launcher chooses it from the strides); grid x: t < width, the item within a row. t < half is a
// rotated pair, t >= half a pass-through channel rotary_dim + (t - half); each tensor has its own width
// (half + head_dim - rotary_dim when it is rotated out of place with rotary_dim < head_dim, else half),
// so q and k may differ in head count, head_dim and in-place-ness. Tensors are addressed through element
// strides, so slices of a fused qkv buffer need no copy. Tables are read in their own dtype TT (float or
// double) through element strides; the math is in double, rounded once to T.
// Positions outside [0, table_rows) are never read from the tables: that row's rotated channels are
// written as NaN and error[0..2] = {1, position, table_rows} is stored (checked later, off the hot path).
// LAYOUT: 0 "half", 1 "interleaved", 2 "deepseek" (a compile-time flag).
template <typename T, typename TT, int LAYOUT>
__global__ void rope_apply(const T* __restrict__ q_in, T* __restrict__ q_out, unsigned q_rows, unsigned q_heads,
                           unsigned q_heads_mul, unsigned q_heads_shr, int q_width, long long q_isb,
                           long long q_ish, long long q_iss, long long q_isd, long long q_osb, long long q_osh,
                           long long q_oss, long long q_osd, const T* __restrict__ k_in, T* __restrict__ k_out,
                           unsigned k_rows, unsigned k_heads, unsigned k_heads_mul, unsigned k_heads_shr,
                           int k_width, long long k_isb, long long k_ish, long long k_iss, long long k_isd,
                           long long k_osb, long long k_osh, long long k_oss, long long k_osd,
                           const TT* __restrict__ cos_table, const TT* __restrict__ sin_table, long long cos_rs,
                           long long cos_cs, long long sin_rs, long long sin_cs, long long table_rows,
                           const long long* __restrict__ positions, long long pos_sb, long long pos_ss,
                           unsigned seq, unsigned seq_mul, unsigned seq_shr, int half, int rotary_dim,
                           double sign, int token_major, long long* __restrict__ error) {
    const unsigned row_stride = blockDim.y * gridDim.y;
    const int col_stride = (int)(blockDim.x * gridDim.x);
    #pragma unroll 1
    for (unsigned z = blockIdx.z * blockDim.z + threadIdx.z; z < 2u; z += blockDim.z * gridDim.z) {
        // per-tensor scalars, selected one by one (a selected struct would live in local memory)
        const bool kz = z != 0u;
        const unsigned rows = kz ? k_rows : q_rows;
        const unsigned heads = kz ? k_heads : q_heads;
        const unsigned heads_mul = kz ? k_heads_mul : q_heads_mul;
        const unsigned heads_shr = kz ? k_heads_shr : q_heads_shr;
        const int width = kz ? k_width : q_width;
        const T* const in_base = kz ? k_in : q_in;
        T* const out_base = kz ? k_out : q_out;
        const long long isb = kz ? k_isb : q_isb, ish = kz ? k_ish : q_ish, iss = kz ? k_iss : q_iss;
        const long long isd = kz ? k_isd : q_isd;
        const long long osb = kz ? k_osb : q_osb, osh = kz ? k_osh : q_osh, oss = kz ? k_oss : q_oss;
        const long long osd = kz ? k_osd : q_osd;
        #pragma unroll 1
        for (unsigned row = blockIdx.y * blockDim.y + threadIdx.y; row < rows; row += row_stride) {
            unsigned bi, hi, si;
            if (token_major) {  // row = (bi * seq + si) * heads + hi
                const unsigned bs = rope_div(row, heads_mul, heads_shr);
                hi = row - bs * heads;
                bi = rope_div(bs, seq_mul, seq_shr);
                si = bs - bi * seq;
            } else {  // row = (bi * heads + hi) * seq + si
                const unsigned bh = rope_div(row, seq_mul, seq_shr);
                si = row - bh * seq;
                bi = rope_div(bh, heads_mul, heads_shr);
                hi = bh - bi * heads;
            }
            const T* in = in_base + (long long)bi * isb + (long long)hi * ish + (long long)si * iss;
            T* out = out_base + (long long)bi * osb + (long long)hi * osh + (long long)si * oss;
            const long long p = positions[(long long)bi * pos_sb + (long long)si * pos_ss];
            const bool bad = p < 0 || p >= table_rows;
            if (bad && (int)(blockIdx.x * blockDim.x + threadIdx.x) < width) {
                error[1] = p;
                error[2] = table_rows;
                error[0] = 1;
            }
            #pragma unroll 1
            for (int t = (int)(blockIdx.x * blockDim.x + threadIdx.x); t < width; t += col_stride) {
                if (t >= half) {  // pass-through channel
                    const long long ch = rotary_dim + (t - half);
                    out[ch * osd] = in[ch * isd];
                    continue;
                }
                const int i1 = LAYOUT == 0 ? t : 2 * t;
                const int i2 = LAYOUT == 0 ? t + half : 2 * t + 1;
                const int o1 = LAYOUT == 1 ? 2 * t : t;
                const int o2 = LAYOUT == 1 ? 2 * t + 1 : t + half;
                if (bad) {
                    const double nan = __longlong_as_double(0x7FF8000000000000LL);
                    rope_store(out + o1 * osd, nan);
                    rope_store(out + o2 * osd, nan);
                    continue;
                }
                const double c = (double)cos_table[p * cos_rs + t * cos_cs];
                const double s = __dmul_rn(sign, (double)sin_table[p * sin_rs + t * sin_cs]);
                const double x1 = rope_load(in + i1 * isd);
                const double x2 = rope_load(in + i2 * isd);
                rope_store(out + o1 * osd, __dsub_rn(__dmul_rn(x1, c), __dmul_rn(x2, s)));
                rope_store(out + o2 * osd, __dadd_rn(__dmul_rn(x2, c), __dmul_rn(x1, s)));
            }
        }
    }
}

#ifdef ROPEFLOW_INSTANTIATE
// Explicit instances for an offline nvcc check and the host harness; at run time NVRTC instantiates them by
// name_expressions (_cupy.name_expressions() lists the same set).
template __global__ void rope_table_exact<float>(const double*, long long, long long, int, double, double,
                                                 float*, float*);
template __global__ void rope_table_exact<double>(const double*, long long, long long, int, double, double,
                                                  double*, double*);
#define ROPE_CAST_INSTANCE(F, T) template __global__ void rope_cast<F, T>(const F*, T*, long long);
ROPE_CAST_INSTANCE(float, rope_half)
ROPE_CAST_INSTANCE(float, rope_bf16)
ROPE_CAST_INSTANCE(double, rope_half)
ROPE_CAST_INSTANCE(double, rope_bf16)
#define ROPE_APPLY_INSTANCE(T, TT, L)                                                                          \
    template __global__ void rope_apply<T, TT, L>(                                                              \
        const T*, T*, unsigned, unsigned, unsigned, unsigned, int, long long, long long, long long, long long,  \
        long long, long long, long long, long long, const T*, T*, unsigned, unsigned, unsigned, unsigned, int,  \
        long long, long long, long long, long long, long long, long long, long long, long long, const TT*,      \
        const TT*, long long, long long, long long, long long, long long, const long long*, long long,          \
        long long, unsigned, unsigned, unsigned, int, int, double, int, long long*);
#define ROPE_APPLY_LAYOUTS(T, TT) ROPE_APPLY_INSTANCE(T, TT, 0) ROPE_APPLY_INSTANCE(T, TT, 1) \
    ROPE_APPLY_INSTANCE(T, TT, 2)
ROPE_APPLY_LAYOUTS(float, float)
ROPE_APPLY_LAYOUTS(float, double)
ROPE_APPLY_LAYOUTS(double, float)
ROPE_APPLY_LAYOUTS(double, double)
ROPE_APPLY_LAYOUTS(rope_half, float)
ROPE_APPLY_LAYOUTS(rope_half, double)
ROPE_APPLY_LAYOUTS(rope_bf16, float)
ROPE_APPLY_LAYOUTS(rope_bf16, double)
#endif
