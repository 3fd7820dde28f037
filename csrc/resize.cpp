// wsol_fast._resize: Pillow's bilinear `Image.resize` (what torchvision's `Resize` runs on a PIL image, and
// so what wsolevaluation trains and tests on), bit for bit, on uint8 HWC arrays, with an optional crop.
//
// The arithmetic is Pillow's ImagingResample for 8-bit images (src/libImaging/Resample.c), re-derived:
//   * per output position, a triangle filter whose support is widened by the shrink factor (antialias):
//     scale = in / out, support = max(scale, 1), centre = (i + 0.5) * scale, taps from
//     (int)(centre - support + 0.5) to (int)(centre + support + 0.5) clipped to the image, weights
//     tri((tap - centre + 0.5) / max(scale, 1)) divided by their sum, all in double, in that order;
//   * the weights rounded to 22-bit fixed point ((int)(0.5 + w * 2^22)); each output channel the integer
//     sum 2^21 + sum(pixel * weight), shifted right by 22 and clamped to 0..255;
//   * a horizontal pass over the rows the vertical pass needs, rounded to uint8, then the vertical pass;
//     Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many pixels as
//     the width (`vertical_first`), and the caller says which Pillow to follow.
// Integer sums are exact in any order, so the passes are free to vectorise; the double-precision weights
// are computed in a function compiled for baseline x86-64 (no FMA contraction), as Pillow's are.
//
// Faster than Pillow (2.6-3.7x less CPU time per image, benchmarks/test_bench_loaders.py) because (1) three
// channels are filtered, not Pillow's four-byte RGBX pixels, (2) the vertical pass runs over whole rows,
// vectorised (compiled for AVX2 too, picked at run time), (3) the horizontal pass has a fixed tap count
// per call (unrolled), and (4) with a crop only the cropped outputs, and the source rows or columns they
// read, are computed. The horizontal pass (scalar, ~70% of the time for 500 x 375 -> 256) is the one to
// speed up next; tried and dropped, no faster on the 2-core EPYC measured: transpose + vertical pass +
// transpose, two rows per iteration, and 8-row transposed blocks with 8-lane multiply-adds.
//
// No torch and no numpy headers: the Python API takes buffers (`resize_crop`, below) and releases the GIL.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "isa.h"

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's PRECISION_BITS for 8-bit images

// Filter weights of `count` output positions starting at `first`, of a resize of `in_size` samples to
// `out_size`. Pillow's precompute_coeffs + normalize_coeffs_8bpc for the bilinear filter (box = whole
// image), restricted to the outputs asked for.
struct Taps {
  int ksize = 0;
  std::vector<int> start, count;  // per output: first source sample, number of taps
  std::vector<int32_t> weight;    // per output: ksize fixed-point weights (zeros past count)
};

Taps bilinear_taps(int in_size, int out_size, int first, int count) {
  Taps t;
  // Pillow: scale = (double)(in1 - in0) / outSize, with the box's float in0 = 0 and in1 = in_size.
  const double scale = static_cast<double>(static_cast<float>(in_size) - 0.0f) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = 1.0 * filterscale;  // the bilinear filter's support is 1
  t.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.start.resize(count);
  t.count.resize(count);
  t.weight.assign(static_cast<size_t>(count) * t.ksize, 0);
  std::vector<double> w(t.ksize);
  for (int j = 0; j < count; ++j) {
    const int xx = first + j;
    const double center = 0.0 + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      double d = (x + xmin - center + 0.5) * ss;
      if (d < 0.0) d = -d;
      const double v = d < 1.0 ? 1.0 - d : 0.0;
      w[x] = v;
      ww += v;
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) w[x] /= ww;
      const double scaled = w[x] * (1 << kPrecisionBits);
      t.weight[static_cast<size_t>(j) * t.ksize + x] =
          static_cast<int32_t>(w[x] < 0 ? -0.5 + scaled : 0.5 + scaled);
    }
    t.start[j] = xmin;
    t.count[j] = xmax;
  }
  return t;
}

WSOL_ALWAYS_INLINE uint8_t clip8(int32_t sum) {
  const int32_t v = sum >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// The same taps with one count for all outputs (the largest), for the horizontal pass: a window that would
// run past the image's end starts earlier, its weights shifted right behind zeros. Adding zero-weight taps
// leaves the integer sums unchanged, and a fixed count lets the compiler unroll the tap loop.
Taps padded(const Taps& t, int in_size) {
  Taps p;
  p.ksize = *std::max_element(t.count.begin(), t.count.end());
  const int n = static_cast<int>(t.start.size());
  p.start.resize(n);
  p.count.assign(n, p.ksize);
  p.weight.assign(static_cast<size_t>(n) * p.ksize, 0);
  for (int j = 0; j < n; ++j) {
    const int shift = std::max(0, t.start[j] + p.ksize - in_size);
    p.start[j] = t.start[j] - shift;
    for (int x = 0; x < t.count[j]; ++x) {
      p.weight[static_cast<size_t>(j) * p.ksize + shift + x] = t.weight[static_cast<size_t>(j) * t.ksize + x];
    }
  }
  return p;
}

// Horizontal pass: `rows` source rows (from `src`, `in_w` pixels of C channels) -> rows of `out_w` pixels,
// with padded taps (every output has t.ksize taps; K > 0: that count known at compile time).
template <int C, int K>
WSOL_ALWAYS_INLINE void horizontal_impl(const uint8_t* src, int in_w, int rows, const Taps& t, uint8_t* dst) {
  const int out_w = static_cast<int>(t.start.size());
  const int n = K > 0 ? K : t.ksize;
  for (int r = 0; r < rows; ++r) {
    const uint8_t* line = src + static_cast<size_t>(r) * in_w * C;
    uint8_t* out = dst + static_cast<size_t>(r) * out_w * C;
    const int32_t* k = t.weight.data();
    for (int i = 0; i < out_w; ++i, k += n) {
      const uint8_t* p = line + static_cast<size_t>(t.start[i]) * C;
      int32_t s[C];
      for (int c = 0; c < C; ++c) s[c] = 1 << (kPrecisionBits - 1);
      for (int x = 0; x < n; ++x) {
        for (int c = 0; c < C; ++c) s[c] += static_cast<int32_t>(p[x * C + c]) * k[x];
      }
      for (int c = 0; c < C; ++c) out[i * C + c] = clip8(s[c]);
    }
  }
}

template <int C>
WSOL_ALWAYS_INLINE void horizontal_dispatch(const uint8_t* src, int in_w, int rows, const Taps& t, uint8_t* dst) {
  switch (t.ksize) {
    case 2: return horizontal_impl<C, 2>(src, in_w, rows, t, dst);
    case 3: return horizontal_impl<C, 3>(src, in_w, rows, t, dst);
    case 4: return horizontal_impl<C, 4>(src, in_w, rows, t, dst);
    case 5: return horizontal_impl<C, 5>(src, in_w, rows, t, dst);
    case 6: return horizontal_impl<C, 6>(src, in_w, rows, t, dst);
    default: return horizontal_impl<C, 0>(src, in_w, rows, t, dst);
  }
}

// Vertical pass: each output row (`width` bytes) is a weighted sum of rows of `src` (`stride` bytes apart).
WSOL_ALWAYS_INLINE void vertical_impl(const uint8_t* src, size_t stride, int width, const Taps& t, uint8_t* dst,
                                      int32_t* acc) {
  const int out_h = static_cast<int>(t.start.size());
  for (int j = 0; j < out_h; ++j) {
    const int32_t* k = &t.weight[static_cast<size_t>(j) * t.ksize];
    for (int e = 0; e < width; ++e) acc[e] = 1 << (kPrecisionBits - 1);
    for (int y = 0; y < t.count[j]; ++y) {
      const uint8_t* row = src + static_cast<size_t>(t.start[j] + y) * stride;
      const int32_t w = k[y];
#pragma omp simd
      for (int e = 0; e < width; ++e) acc[e] += static_cast<int32_t>(row[e]) * w;
    }
    uint8_t* out = dst + static_cast<size_t>(j) * width;
#pragma omp simd
    for (int e = 0; e < width; ++e) out[e] = clip8(acc[e]);
  }
}

template <int C>
void horizontal_default(const uint8_t* src, int in_w, int rows, const Taps& t, uint8_t* dst) {
  horizontal_dispatch<C>(src, in_w, rows, t, dst);
}
void vertical_default(const uint8_t* src, size_t stride, int width, const Taps& t, uint8_t* dst, int32_t* acc) {
  vertical_impl(src, stride, width, t, dst, acc);
}
#if WSOL_X86_MULTIVERSION
template <int C>
WSOL_TARGET_AVX2 void horizontal_avx2(const uint8_t* src, int in_w, int rows, const Taps& t, uint8_t* dst) {
  horizontal_dispatch<C>(src, in_w, rows, t, dst);
}
WSOL_TARGET_AVX2 void vertical_avx2(const uint8_t* src, size_t stride, int width, const Taps& t, uint8_t* dst,
                                    int32_t* acc) {
  vertical_impl(src, stride, width, t, dst, acc);
}
#endif

template <int C>
void horizontal(const uint8_t* src, int in_w, int rows, const Taps& t, uint8_t* dst) {
#if WSOL_X86_MULTIVERSION
  if (wsol_fast::detected_isa() != wsol_fast::Isa::kDefault) return horizontal_avx2<C>(src, in_w, rows, t, dst);
#endif
  horizontal_default<C>(src, in_w, rows, t, dst);
}

void vertical(const uint8_t* src, size_t stride, int width, const Taps& t, uint8_t* dst) {
  std::vector<int32_t> acc(width);
#if WSOL_X86_MULTIVERSION
  if (wsol_fast::detected_isa() != wsol_fast::Isa::kDefault) return vertical_avx2(src, stride, width, t, dst, acc.data());
#endif
  vertical_default(src, stride, width, t, dst, acc.data());
}

void horizontal_any(const uint8_t* src, int in_w, int rows, int c, const Taps& t, uint8_t* dst) {
  switch (c) {
    case 1: return horizontal<1>(src, in_w, rows, t, dst);
    case 2: return horizontal<2>(src, in_w, rows, t, dst);
    case 3: return horizontal<3>(src, in_w, rows, t, dst);
    default: return horizontal<4>(src, in_w, rows, t, dst);
  }
}

// Pillow 13's order of the passes: vertical first when the height shrinks by more than twice as many
// pixels as the width does (ImagingResampleInner); earlier Pillows always run the horizontal pass first.
// The two orders round the intermediate image differently (up to one level apart).
bool vertical_first(int h, int w, int out_h, int out_w, bool pillow13) {
  return pillow13 && (h - out_h) > 0 && (h - out_h) > (w - out_w) * 2;
}

// Resize h x w x c (uint8, contiguous) to out_h x out_w and write the crop_h x crop_w window at (y0, x0).
// A side that keeps its size is not filtered (as in Pillow; its weights would be the identity anyway).
void resize_crop(const uint8_t* src, int h, int w, int c, int out_h, int out_w, int y0, int x0, int crop_h,
                 int crop_w, bool pillow13, uint8_t* dst) {
  const size_t pixel = static_cast<size_t>(c);
  const bool need_h = out_w != w, need_v = out_h != h;
  if (!need_h && !need_v) {
    for (int r = 0; r < crop_h; ++r) {
      std::memcpy(dst + r * crop_w * pixel, src + ((y0 + r) * static_cast<size_t>(w) + x0) * pixel, crop_w * pixel);
    }
    return;
  }
  if (!need_v) {  // horizontal only, on the cropped rows
    const Taps horiz = padded(bilinear_taps(w, out_w, x0, crop_w), w);
    return horizontal_any(src + y0 * w * pixel, w, crop_h, c, horiz, dst);
  }
  const Taps vert = bilinear_taps(h, out_h, y0, crop_h);
  if (!need_h) {  // vertical only, on the cropped columns
    return vertical(src + x0 * pixel, w * pixel, static_cast<int>(crop_w * pixel), vert, dst);
  }
  const Taps horiz = padded(bilinear_taps(w, out_w, x0, crop_w), w);
  if (!vertical_first(h, w, out_h, out_w, pillow13)) {
    // The source rows the vertical pass reads (monotone in the output row): Pillow's ybox_first/last.
    const int first = vert.start.front(), last = vert.start.back() + vert.count.back();
    Taps shifted = vert;
    for (int& s : shifted.start) s -= first;
    std::vector<uint8_t> tmp((last - first) * crop_w * pixel);
    horizontal_any(src + first * w * pixel, w, last - first, c, horiz, tmp.data());
    vertical(tmp.data(), crop_w * pixel, static_cast<int>(crop_w * pixel), shifted, dst);
  } else {
    // The source columns the horizontal pass reads.
    const int first = horiz.start.front(), last = horiz.start.back() + horiz.ksize;
    Taps shifted = horiz;
    for (int& s : shifted.start) s -= first;
    std::vector<uint8_t> tmp(crop_h * (last - first) * pixel);
    vertical(src + first * pixel, w * pixel, static_cast<int>((last - first) * pixel), vert, tmp.data());
    horizontal_any(tmp.data(), last - first, crop_h, c, shifted, dst);
  }
}

// resize_crop(src, h, w, c, out_h, out_w, y0, x0, crop_h, crop_w, pillow13, dst): src a C-contiguous
// buffer of h*w*c uint8, dst a writable one of crop_h*crop_w*c; pillow13: Pillow 13's order of the passes. Argument errors are ValueErrors naming the argument.
PyObject* py_resize_crop(PyObject*, PyObject* args) {
  Py_buffer src, dst;
  int h, w, c, out_h, out_w, y0, x0, crop_h, crop_w, pillow13;
  if (!PyArg_ParseTuple(args, "y*iiiiiiiiipw*", &src, &h, &w, &c, &out_h, &out_w, &y0, &x0, &crop_h, &crop_w,
                        &pillow13, &dst)) {
    return nullptr;
  }
  std::string error;
  if (h < 1 || w < 1) {
    error = "image height and width must be >= 1, got " + std::to_string(h) + " x " + std::to_string(w);
  } else if (c < 1 || c > 4) {
    error = "channels must be 1 to 4, got " + std::to_string(c);
  } else if (out_h < 1 || out_w < 1) {
    error = "size must be >= 1, got " + std::to_string(out_h) + " x " + std::to_string(out_w);
  } else if (crop_h < 1 || crop_w < 1 || y0 < 0 || x0 < 0 || y0 + crop_h > out_h || x0 + crop_w > out_w) {
    error = "crop (y " + std::to_string(y0) + ", x " + std::to_string(x0) + ", " + std::to_string(crop_h) +
            " x " + std::to_string(crop_w) + ") is not inside the " + std::to_string(out_h) + " x " +
            std::to_string(out_w) + " resized image";
  } else if (src.len != static_cast<Py_ssize_t>(h) * w * c) {
    error = "image buffer holds " + std::to_string(src.len) + " bytes, not h * w * c = " +
            std::to_string(static_cast<long long>(h) * w * c);
  } else if (dst.len != static_cast<Py_ssize_t>(crop_h) * crop_w * c) {
    error = "output buffer holds " + std::to_string(dst.len) + " bytes, not " +
            std::to_string(static_cast<long long>(crop_h) * crop_w * c);
  }
  if (error.empty()) {
    Py_BEGIN_ALLOW_THREADS
    resize_crop(static_cast<const uint8_t*>(src.buf), h, w, c, out_h, out_w, y0, x0, crop_h, crop_w,
                pillow13 != 0, static_cast<uint8_t*>(dst.buf));
    Py_END_ALLOW_THREADS
  }
  PyBuffer_Release(&src);
  PyBuffer_Release(&dst);
  if (!error.empty()) {
    PyErr_SetString(PyExc_ValueError, error.c_str());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"resize_crop", py_resize_crop, METH_VARARGS,
     "resize_crop(src, h, w, c, out_h, out_w, y0, x0, crop_h, crop_w, pillow13, dst): Pillow's bilinear "
     "resize of the uint8 h x w x c image to out_h x out_w, the crop_h x crop_w window at (y0, x0) written to "
     "dst; pillow13: Pillow 13's order of the two passes (else horizontal first, as earlier Pillows)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" PyObject* PyInit__resize(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_resize",
                                          "Pillow's bilinear resize, bit-exact, on uint8 HWC buffers.", -1,
                                          methods};
  return PyModule_Create(&module_def);
}
