// threshold_boxes: every box that cv2.findContours(RETR_TREE) + boundingRect gives on a uint8 score
// map at EVERY threshold k (binary = img > k), from two component trees built in one pass each.
//
// Used by wsol_fast/metrics.py (MaxBoxAccV2 at 1,000 thresholds); reached as
// torch.ops.wsol_fast_metrics.threshold_boxes after `import wsol_fast._C`. It is a metric helper, not
// a network op (integers, no autograd, no fake kernel), so it is a library of its own rather than one
// of the `wsol_fast` ops declared in wsol_fast_ops.cpp.
//
// Why the trees give findContours' boxes (Suzuki & Abe's border following, which OpenCV implements on
// the image padded with a zero frame): at threshold k there is exactly one outer contour per
// 8-connected component of {img > k} and one hole contour per 4-connected component of {img <= k}
// that does not touch the image border. An outer contour passes through the component's extreme
// pixels, so its boundingRect is the component's extent; a hole contour runs over the foreground
// pixels 4-adjacent to the hole, whose extent is the hole's extent grown by one pixel on each side.
//   * components of {img > k}, all k: the max-tree (8-connectivity); a node of level v whose parent
//     has level u is the component for u <= k < v (the root, for 0 <= k < v);
//   * components of {img <= k}, all k: the min-tree (4-connectivity); a node of level b whose parent
//     has level c is the component for b <= k < c (the root, the whole image, is never a hole).
// Trees: union-find over the pixels in sorted order (Berger et al., ICIP 2007), counting sort on
// uint8, path halving, then canonicalisation; extents are merged child -> parent in processing order.
//
// Output: int32 [n, 6] rows (lo, hi, x0, y0, x1, y1): the box (x0, y0, x1, y1), already in
// wsolevaluation's form (x + w, y + h clipped to width - 1 / height - 1), is one of findContours'
// boxes at every threshold k with lo <= k < hi. tests/test_metrics.py checks the result against
// the literal findContours loop.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <vector>

namespace wsol_fast {
namespace {

inline int32_t find_root(int32_t* zpar, int32_t x) {
  while (zpar[x] != x) {
    zpar[x] = zpar[zpar[x]];  // path halving
    x = zpar[x];
  }
  return x;
}

// Work buffers, kept between calls (one evaluator scores thousands of maps of one size).
struct TreeBuffers {
  std::vector<int32_t> order, parent, zpar, repr;
  std::vector<uint8_t> rank, g;
  std::vector<int16_t> x0, y0, x1, y1;
};

// Appends the rows of one component tree. `g` [height, width] holds the processing key (pixels are
// added in decreasing g): g = img for the max-tree, 255 - img for the min-tree. Pixels are indexed
// in a frame padded by one pixel on each side, so that neighbours need no bounds checks: the frame's
// zpar stays -2 and is never visited.
void tree_rows(const uint8_t* g_image, int64_t height, int64_t width, bool max_tree, TreeBuffers& buf,
               std::vector<int32_t>& rows) {
  const int32_t h = static_cast<int32_t>(height), w = static_cast<int32_t>(width);
  const int32_t wp = w + 2, np = (h + 2) * wp, n = h * w;
  buf.order.resize(n);
  buf.parent.resize(np);
  buf.repr.resize(np);
  buf.zpar.assign(np, -2);
  buf.rank.assign(np, 0);
  buf.x0.resize(np);
  buf.y0.resize(np);
  buf.x1.resize(np);
  buf.y1.resize(np);
  int32_t* order = buf.order.data();
  int32_t* parent = buf.parent.data();
  int32_t* repr = buf.repr.data();
  int32_t* zp = buf.zpar.data();
  uint8_t* rank = buf.rank.data();
  int16_t *x0 = buf.x0.data(), *y0 = buf.y0.data(), *x1 = buf.x1.data(), *y1 = buf.y1.data();
  // g in the padded frame (the frame's value is never read), extents start as the pixel itself
  std::vector<uint8_t>& g_pad = buf.g;
  g_pad.assign(np, 0);
  uint8_t* g = g_pad.data();
  for (int32_t y = 0; y < h; ++y) {
    const int32_t row = (y + 1) * wp + 1;
    std::memcpy(g + row, g_image + static_cast<int64_t>(y) * w, w);
    for (int32_t x = 0; x < w; ++x) {
      zp[row + x] = -1;                 // an image pixel, not yet added
      x0[row + x] = x1[row + x] = static_cast<int16_t>(x);
      y0[row + x] = y1[row + x] = static_cast<int16_t>(y);
    }
  }
  // counting sort, decreasing g (ties in raster order)
  std::array<int32_t, 257> next{};
  for (int32_t y = 0; y < h; ++y)
    for (int32_t x = 0, p = (y + 1) * wp + 1; x < w; ++x, ++p) ++next[256 - g[p]];
  for (int b = 256, total = n; b >= 0; --b) {   // next[b] = start of bucket b
    total -= next[b];
    next[b] = total;
  }
  for (int32_t y = 0; y < h; ++y)
    for (int32_t x = 0, p = (y + 1) * wp + 1; x < w; ++x, ++p) order[next[256 - g[p]]++] = p;

  // foreground: 8-connected; holes: 4-connected
  const int32_t offsets8[8] = {-1, 1, -wp, wp, -wp - 1, -wp + 1, wp - 1, wp + 1};
  const int num_offsets = max_tree ? 8 : 4;
  // union-find, union by rank; repr[root] is the set's newest pixel, its current node's representative
  for (int32_t i = 0; i < n; ++i) {
    const int32_t p = order[i];
    parent[p] = p;
    zp[p] = p;
    repr[p] = p;
    int32_t root_p = p;
    for (int j = 0; j < num_offsets; ++j) {
      const int32_t q = p + offsets8[j];
      if (zp[q] < 0) continue;          // not added yet, or the frame
      const int32_t r = find_root(zp, q);
      if (r == root_p) continue;
      parent[repr[r]] = p;
      if (rank[root_p] < rank[r]) {
        zp[root_p] = r;
        root_p = r;
      } else {
        zp[r] = root_p;
        if (rank[root_p] == rank[r]) ++rank[root_p];
      }
      repr[root_p] = p;
    }
  }
  // canonical: every pixel points to the representative of its node, every representative to the
  // representative of its parent node (root first: reverse processing order)
  for (int32_t i = n - 1; i >= 0; --i) {
    const int32_t p = order[i];
    const int32_t q = parent[p];
    if (g[parent[q]] == g[q]) parent[p] = parent[q];
  }
  // extents, children before parents (processing order)
  for (int32_t i = 0; i < n; ++i) {
    const int32_t p = order[i], q = parent[p];
    if (q == p) continue;
    x0[q] = std::min(x0[q], x0[p]);
    y0[q] = std::min(y0[q], y0[p]);
    x1[q] = std::max(x1[q], x1[p]);
    y1[q] = std::max(y1[q], y1[p]);
  }
  for (int32_t i = 0; i < n; ++i) {
    const int32_t p = order[i], q = parent[p];
    const bool root = q == p;
    if (!root && g[q] == g[p]) continue;  // not a node's representative
    int32_t lo, hi, bx0, by0, bx1, by1;
    if (max_tree) {
      lo = root ? 0 : g[q];
      hi = g[p];
      bx0 = x0[p];
      by0 = y0[p];
      bx1 = std::min<int32_t>(x1[p] + 1, w - 1);
      by1 = std::min<int32_t>(y1[p] + 1, h - 1);
    } else {
      if (root) continue;                                   // the whole image
      if (x0[p] == 0 || y0[p] == 0 || x1[p] == w - 1 || y1[p] == h - 1) continue;  // not a hole
      lo = 255 - g[p];
      hi = 255 - g[q];
      bx0 = x0[p] - 1;
      by0 = y0[p] - 1;
      bx1 = std::min<int32_t>(x1[p] + 2, w - 1);
      by1 = std::min<int32_t>(y1[p] + 2, h - 1);
    }
    if (lo >= hi) continue;
    rows.insert(rows.end(), {lo, hi, bx0, by0, bx1, by1});
  }
}

at::Tensor threshold_boxes_cpu(const at::Tensor& image) {
  TORCH_CHECK_VALUE(image.dim() == 2, "image must be 2D [H, W], got shape ", image.sizes());
  TORCH_CHECK_VALUE(image.scalar_type() == at::kByte, "image must be uint8, got ", image.scalar_type());
  TORCH_CHECK_VALUE(image.size(0) >= 1 && image.size(1) >= 1 && image.size(0) <= 32767 && image.size(1) <= 32767,
                    "image sides must lie in [1, 32767], got ", image.sizes());
  TORCH_CHECK_VALUE(image.numel() < (int64_t{1} << 31), "image has too many pixels: ", image.numel());
  const at::Tensor img = image.contiguous();
  const int64_t height = img.size(0), width = img.size(1), n = img.numel();
  const uint8_t* f = img.data_ptr<uint8_t>();
  thread_local TreeBuffers buf;
  thread_local std::vector<int32_t> rows;
  thread_local std::vector<uint8_t> inverted;
  rows.clear();
  tree_rows(f, height, width, /*max_tree=*/true, buf, rows);
  inverted.resize(n);
  for (int64_t p = 0; p < n; ++p) inverted[p] = static_cast<uint8_t>(255 - f[p]);
  tree_rows(inverted.data(), height, width, /*max_tree=*/false, buf, rows);
  at::Tensor out = at::empty({static_cast<int64_t>(rows.size() / 6), 6}, img.options().dtype(at::kInt));
  if (!rows.empty()) std::memcpy(out.data_ptr<int32_t>(), rows.data(), rows.size() * sizeof(int32_t));
  return out;
}

}  // namespace

TORCH_LIBRARY(wsol_fast_metrics, m) {
  // rows [n, 6] int32 (lo, hi, x0, y0, x1, y1) of a uint8 map [H, W]
  m.def("threshold_boxes(Tensor image) -> Tensor");
}

TORCH_LIBRARY_IMPL(wsol_fast_metrics, CPU, m) {
  m.impl("threshold_boxes", &threshold_boxes_cpu);
}

}  // namespace wsol_fast
