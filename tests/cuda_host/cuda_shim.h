// Host C++ shim for running ropeflow/backends/kernels/rope.cu, unmodified, on the CPU (tests/test_cuda_host.py).
//
// * The CUDA built-ins threadIdx/blockIdx/blockDim/gridDim are plain globals that the launcher sets before
//   each (block, thread) call; kernels are grid-stride loops without shared memory or barriers, so running
//   every (block, thread) one after the other is an exact execution.
// * The __*_rn intrinsics are plain IEEE operations (the harness compiles with -ffp-contract=off, so the
//   compiler cannot fuse them into FMAs: each rounds once, as on the GPU).
// * sincosf/sincos are the host libm's (glibc), so tables agree with the GPU's to the ulps of the two libms,
//   not bit for bit; everything else (indexing, rounding of the rotation, 16-bit conversions) is exact.
// * Device-only code in rope.cu (inline PTX) is behind __CUDA_ARCH__, which is not defined here.
#pragma once
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1  // sincosf / sincos
#endif
#include <math.h>
#include <string.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict

struct rope_shim_dim3 {
    unsigned x, y, z;
};
static rope_shim_dim3 threadIdx, blockIdx, blockDim, gridDim;

static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline float __double2float_rn(double a) { return (float)a; }
static inline unsigned __umulhi(unsigned a, unsigned b) {
    return (unsigned)(((unsigned long long)a * (unsigned long long)b) >> 32);
}
static inline float __int_as_float(int v) {
    float f;
    memcpy(&f, &v, sizeof f);
    return f;
}
static inline long long __double_as_longlong(double v) {
    long long i;
    memcpy(&i, &v, sizeof i);
    return i;
}
static inline double __longlong_as_double(long long v) {
    double d;
    memcpy(&d, &v, sizeof d);
    return d;
}
