// CPU direct convolution (stride 1, dilation 1, one group) for layers with few channels,
// where oneDNN's GEMM-shaped convolution runs far below the machine's FMA rate (B-LeNet's
// 1->5 and 5->10 layers: about 18 GMAC/s on 2 cores). Work is split into blocks of output
// rows of one image; a block's input rows are copied, zero-padded and converted to float32
// into a per-thread buffer, and conv_kernel.h computes every output channel of the block
// from it. float32 outputs in NCHW are written in place, others through a float32 block.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/kernels.h"
#include "eexit.h"

namespace eexit {
namespace {

// Rows [r0, r0 + rows) of image n's output; `in` holds their padded input rows.
template <typename scalar_t>
void conv_block(const at::Tensor& x, at::Tensor& y, const cpu::ConvRowsArgs& proto, int64_t n, int64_t r0,
                int64_t rows, int64_t ph, int64_t pw, std::vector<float>& in, std::vector<float>& out) {
  const int64_t C_in = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t sn = x.stride(0), sc = x.stride(1), sh = x.stride(2), sw = x.stride(3);
  const scalar_t* xp = x.const_data_ptr<scalar_t>() + n * sn;
  std::fill(in.begin(), in.end(), 0.f);
  const int64_t in_rows = rows + proto.KH - 1;
  for (int64_t ic = 0; ic < C_in; ++ic) {
    for (int64_t pr = 0; pr < in_rows; ++pr) {
      const int64_t ih = r0 + pr - ph;
      if (ih < 0 || ih >= H) continue;
      const scalar_t* src = xp + ic * sc + ih * sh;
      float* dst = in.data() + ic * proto.in_cs + pr * proto.in_rs + pw;
      if (sw == 1) {
        for (int64_t iw = 0; iw < W; ++iw) dst[iw] = static_cast<float>(src[iw]);
      } else {
        for (int64_t iw = 0; iw < W; ++iw) dst[iw] = static_cast<float>(src[iw * sw]);
      }
    }
  }
  cpu::ConvRowsArgs a = proto;
  a.in = in.data();
  a.rows = rows;
  const int64_t C_out = y.size(1), W_out = y.size(3);
  const bool direct = out.empty();  // float32 NCHW: the kernel writes y
  if (direct) {
    a.out = y.mutable_data_ptr<float>() + n * y.stride(0) + r0 * W_out;
    a.out_cs = y.stride(1);
    a.out_rs = W_out;
  } else {
    a.out = out.data();
    a.out_cs = rows * W_out;
    a.out_rs = W_out;
  }
  if (cpu::use_avx2()) cpu::conv_rows_avx2(a);
  else cpu::conv_rows_default(a);
  if (direct) return;
  scalar_t* yp = y.mutable_data_ptr<scalar_t>() + n * y.stride(0);
  const int64_t yc = y.stride(1), yh = y.stride(2), yw = y.stride(3);
  for (int64_t oc = 0; oc < C_out; ++oc)
    for (int64_t r = 0; r < rows; ++r) {
      const float* src = out.data() + oc * a.out_cs + r * W_out;
      scalar_t* dst = yp + oc * yc + (r0 + r) * yh;
      for (int64_t ow = 0; ow < W_out; ++ow) dst[ow * yw] = static_cast<scalar_t>(src[ow]);
    }
}

at::Tensor direct_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             at::IntArrayRef padding) {
  const auto [H_out, W_out] = check_direct_conv_args(input, weight, bias, padding);
  const at::MemoryFormat fmt = row_memory_format(input);  // contiguous for every 3-D input
  const at::Tensor x = input.dim() == 3 ? input.unsqueeze(0) : input;
  at::Tensor y = at::empty({x.size(0), weight.size(0), H_out, W_out}, x.options().memory_format(fmt));
  if (y.numel() == 0) return input.dim() == 3 ? y.squeeze(0) : y;

  const at::Tensor w = weight.to(at::kFloat).contiguous();
  const at::Tensor b = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const int64_t N = x.size(0), C_in = x.size(1), W = x.size(3), KH = w.size(2), KW = w.size(3);
  const int64_t lanes = cpu::use_avx2() ? cpu::conv_lanes_avx2() : cpu::conv_lanes_default();
  const int64_t chunks = (W_out + lanes - 1) / lanes;

  // Blocks of output rows: whole images when there are images enough for every thread,
  // otherwise each image cut into about 4 blocks per thread.
  const int64_t want = 4 * at::get_num_threads();
  const int64_t per_image = N >= want ? 1 : std::min<int64_t>(H_out, (want + N - 1) / N);
  const int64_t block_rows = (H_out + per_image - 1) / per_image;
  const int64_t blocks = (H_out + block_rows - 1) / block_rows;

  cpu::ConvRowsArgs proto{};
  proto.in_rs = std::max(W + 2 * padding[1], chunks * lanes + KW - 1);
  proto.in_cs = (block_rows + KH - 1) * proto.in_rs;
  std::vector<int64_t> offsets;
  for (int64_t ic = 0; ic < C_in; ++ic)
    for (int64_t kh = 0; kh < KH; ++kh)
      for (int64_t kw = 0; kw < KW; ++kw) offsets.push_back(ic * proto.in_cs + kh * proto.in_rs + kw);
  proto.tap_offsets = offsets.data();
  proto.weight = w.const_data_ptr<float>();
  proto.bias = b.defined() ? b.const_data_ptr<float>() : nullptr;
  proto.C_in = C_in;
  proto.C_out = w.size(0);
  proto.KH = KH;
  proto.KW = KW;
  proto.W_out = W_out;
  const bool direct = x.scalar_type() == at::kFloat && y.is_contiguous();

  const auto run = [&](auto zero) {
    using scalar_t = decltype(zero);
    at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> in(C_in * proto.in_cs);
      std::vector<float> out(direct ? 0 : proto.C_out * block_rows * W_out);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t r0 = (t % blocks) * block_rows;
        conv_block<scalar_t>(x, y, proto, t / blocks, r0, std::min(block_rows, H_out - r0), padding[0], padding[1],
                             in, out);
      }
    });
  };
  switch (x.scalar_type()) {  // the dtypes check_direct_conv_args lets through
    case at::kFloat: run(float{}); break;
    case at::kHalf: run(at::Half{}); break;
    default: run(at::BFloat16{}); break;
  }
  return input.dim() == 3 ? y.squeeze(0) : y;
}

}  // namespace

TORCH_LIBRARY_IMPL(eexit, CPU, m) {
  m.impl("direct_conv2d", &direct_conv2d_cpu);
}

}  // namespace eexit
