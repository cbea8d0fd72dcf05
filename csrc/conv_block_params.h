// conv_block's parameters from the operator's tensors: checks every tensor (device, dtype,
// shape, layout) so that a bad call raises a clear error instead of reading out of bounds, and
// re-checks the tiling planned in Python (dp_fast/cuda/conv_block.py) against the block. Used by
// the CUDA operator (csrc/conv_block_cuda.cpp) and by the kernel's CPU emulation
// (tests/emulation/conv_block_cpu.cpp); every tensor must be on weight's device.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/conv_block.cuh"
#include "kernels/scheduler_step_math.h"

namespace dp_fast {
namespace conv_block_detail {

using OptTensor = std::optional<at::Tensor>;

inline int dtype_code(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return kF32;
    case at::kBFloat16: return kBF16;
    case at::kDouble: return kF64;
    default:
      TORCH_CHECK(false, "conv_block: ", name, " must be float32, bfloat16 or float64, got ",
                  t.scalar_type());
  }
  return kF32;
}

// A (B, C, T) activation on `device`, read (or written) through its strides.
inline Operand operand(const at::Tensor& t, const char* name, int64_t batch, int64_t channels,
                       int64_t length, const at::Device& device) {
  TORCH_CHECK(t.device() == device, "conv_block: ", name, " must be on ", device, ", got ",
              t.device());
  TORCH_CHECK(t.dim() == 3 && t.size(0) == batch && (channels < 0 || t.size(1) == channels) &&
                  t.size(2) == length,
              "conv_block: ", name, " must be (B=", batch, ", C", channels < 0 ? "" : "=",
              channels < 0 ? "" : std::to_string(channels), ", T=", length, "), got ", t.sizes());
  int64_t span = 0;  // the largest element offset
  for (int d = 0; d < 3; ++d) span += (t.size(d) - 1) * std::abs(t.stride(d));
  TORCH_CHECK(span < (int64_t{1} << 31), "conv_block: ", name, " spans ", span + 1,
              " elements; the kernels index an activation with 32-bit offsets (fewer than 2^31)");
  Operand o;
  o.ptr = t.data_ptr();
  o.dtype = dtype_code(t, name);
  o.sb = t.stride(0);
  o.sc = t.stride(1);
  o.st = t.stride(2);
  return o;
}

// A (B, C_out) per-call condition with unit channel stride.
inline Operand row_operand(const OptTensor& t, const char* name, int64_t batch, int64_t c_out,
                           const at::Device& device) {
  Operand o;
  if (!t.has_value()) return o;
  TORCH_CHECK(t->device() == device && t->dim() == 2 && t->size(0) == batch &&
                  t->size(1) == c_out && t->stride(1) == 1,
              "conv_block: ", name, " must be (B=", batch, ", C_out=", c_out,
              ") with unit channel stride on ", device, "; got ", t->sizes(), " on ", t->device());
  o.ptr = t->data_ptr();
  o.dtype = dtype_code(*t, name);
  o.sb = t->stride(0);
  o.sc = 1;  // checked above
  return o;
}

inline const void* param(const OptTensor& t, const char* name, int64_t numel,
                         const at::Tensor& weight) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->device() == weight.device() && t->scalar_type() == weight.scalar_type() &&
                  t->is_contiguous() && t->numel() == numel,
              "conv_block: ", name, " must be a contiguous ", weight.scalar_type(), " tensor of ",
              numel, " elements on ", weight.device(), "; got ", t->sizes(), " ",
              t->scalar_type(), " on ", t->device());
  return t->data_ptr();
}

}  // namespace conv_block_detail

inline ConvBlockParams make_conv_block_params(
    const at::Tensor& x, const std::optional<at::Tensor>& x2, const at::Tensor& weight,
    const at::Tensor& bias, const std::optional<at::Tensor>& gn_weight,
    const std::optional<at::Tensor>& gn_bias, const std::optional<at::Tensor>& cond,
    const std::optional<at::Tensor>& cond_scale, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& res_x2, const std::optional<at::Tensor>& res_weight,
    const std::optional<at::Tensor>& res_bias, const std::optional<at::Tensor>& sample,
    const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& coefs,
    const at::Tensor& out, const at::Tensor& parts, const at::Tensor& counters,
    at::IntArrayRef config, at::ArrayRef<double> scalars,
    const std::optional<at::Tensor>& head_weight = std::nullopt,
    const std::optional<at::Tensor>& head_bias = std::nullopt) {
  using namespace conv_block_detail;
  TORCH_CHECK((config.size() == 17 || config.size() == 20) && scalars.size() == 2,
              "conv_block: config must have 17 integers (20 for a chain entry's flagged exchange: x_from, x2_from, "
              "flag_slot) and scalars 2 floats");
  const at::Device device = weight.device();
  TORCH_CHECK(weight.dim() == 3 && weight.is_contiguous(),
              "conv_block: weight must be a contiguous (C_out, C_in, K) tensor, got ",
              weight.sizes());
  ConvBlockParams p;
  p.wdtype = dtype_code(weight, "weight");
  p.c_out = weight.size(0);
  p.c_in = weight.size(1);
  p.k = weight.size(2);
  p.w = weight.data_ptr();
  p.bias = param(bias, "bias", p.c_out, weight);
  p.mode = config[0];
  p.act = config[1];
  TORCH_CHECK(p.mode >= 0 && p.mode <= 2 && p.act >= 0 && p.act <= 2,
              "conv_block: mode and act must be 0..2");
  TORCH_CHECK(x.dim() == 3, "conv_block: x must be (B, C1, T_in), got ", x.sizes());
  p.batch = x.size(0);
  p.c1 = x.size(1);
  p.t_in = x.size(2);
  const int64_t c2 = p.c_in - p.c1;
  TORCH_CHECK(c2 >= 0 && (c2 == 0) == !x2.has_value(), "conv_block: weight has ", p.c_in,
              " input channels, x has ", p.c1, (x2.has_value() ? " plus x2" : ""));
  p.x = operand(x, "x", p.batch, p.c1, p.t_in, device);
  if (x2.has_value()) {
    p.x2 = operand(*x2, "x2", p.batch, c2, p.t_in, device);
    TORCH_CHECK(x2->scalar_type() == x.scalar_type(), "conv_block: x2 must have x's dtype (",
                x.scalar_type(), "), got ", x2->scalar_type());
  }
  TORCH_CHECK(p.k <= kConvMaxK && static_cast<int64_t>(p.c_in) * p.k < kConvMaxReduction,
              "conv_block: the kernels take K <= ", kConvMaxK, " and C_in * K < ", kConvMaxReduction, ", got K=", p.k,
              " and C_in=", p.c_in);
  p.t_out = p.mode == 0 ? p.t_in : (p.mode == 1 ? (p.t_in + 1) / 2 : 2 * p.t_in);
  TORCH_CHECK(p.mode == 0 ? p.k % 2 == 1 : p.k == (p.mode == 1 ? 3 : 4), "conv_block: kernel size ",
              p.k, " does not fit mode ", p.mode);
  const int64_t cpg = config[2];
  TORCH_CHECK(gn_weight.has_value() == (cpg > 0) && gn_bias.has_value() == gn_weight.has_value(),
              "conv_block: GroupNorm needs weight, bias and channels per group together");
  if (cpg > 0) {
    TORCH_CHECK(p.c_out % cpg == 0, "conv_block: C_out=", p.c_out, " is not a multiple of ",
                cpg, " channels per group");
    p.gn_w = param(gn_weight, "gn_weight", p.c_out, weight);
    p.gn_b = param(gn_bias, "gn_bias", p.c_out, weight);
    p.cpg = cpg;
  }
  p.eps = scalars[0];
  p.cond = row_operand(cond, "cond", p.batch, p.c_out, device);
  p.scale = row_operand(cond_scale, "cond_scale", p.batch, p.c_out, device);
  TORCH_CHECK(!cond_scale.has_value() || cond.has_value(), "conv_block: cond_scale (FiLM) needs cond");
  if (residual.has_value()) {
    p.cr1 = residual->size(1);
    p.res = operand(*residual, "residual", p.batch, -1, p.t_out, device);
    p.cr = p.cr1;
    if (res_x2.has_value()) {
      p.res2 = operand(*res_x2, "res_x2", p.batch, -1, p.t_out, device);
      TORCH_CHECK(res_x2->scalar_type() == residual->scalar_type(),
                  "conv_block: res_x2 must have residual's dtype (", residual->scalar_type(), "), got ",
                  res_x2->scalar_type());
      p.cr += res_x2->size(1);
    }
    if (res_weight.has_value()) {
      p.rw = param(res_weight, "res_weight", static_cast<int64_t>(p.c_out) * p.cr, weight);
      p.rb = param(res_bias, "res_bias", p.c_out, weight);
      TORCH_CHECK(p.rb != nullptr, "conv_block: res_weight needs res_bias");
    } else {
      TORCH_CHECK(p.cr == p.c_out && !res_x2.has_value(),
                  "conv_block: an identity residual must have C_out channels");
    }
  }
  TORCH_CHECK(head_weight.has_value() == head_bias.has_value(), "conv_block: a head needs head_weight and head_bias together");
  if (head_weight.has_value()) {
    const int64_t a = head_weight->dim() == 2 ? head_weight->size(0) : 0;
    TORCH_CHECK(head_weight->dim() == 2 && head_weight->size(1) == p.c_out && a >= 1 && a <= kConvMaxHeadChannels,
                "conv_block: head_weight must be (A, C_out=", p.c_out, ") with 1 <= A <= ", kConvMaxHeadChannels, ", got ",
                head_weight->sizes());
    p.hw = param(head_weight, "head_weight", a * p.c_out, weight);
    p.hb = param(head_bias, "head_bias", a, weight);
    p.c_head = static_cast<int>(a);
  }
  const int64_t out_channels = p.hw != nullptr ? p.c_head : p.c_out;  // the head's A, or the block's C_out
  p.out = operand(out, "out", p.batch, out_channels, p.t_out, device);
  p.out_ptr = out.data_ptr();
  if (sample.has_value()) {
    p.sample = operand(*sample, "sample", p.batch, out_channels, p.t_out, device);
    if (noise.has_value()) p.noise = operand(*noise, "noise", p.batch, out_channels, p.t_out, device);
    TORCH_CHECK(coefs.has_value() && coefs->scalar_type() == at::kDouble && coefs->dim() == 1 &&
                    coefs->size(0) == kNumCoefs && coefs->is_contiguous() &&
                    coefs->device() == device,
                "conv_block: the step needs coefs, a contiguous float64 (", kNumCoefs, ",) row on ",
                device);
    p.coefs = coefs->const_data_ptr<double>();
    p.clip = scalars[1];
  }
  p.nc = config[3];
  p.t_pad = config[4];
  p.bb = config[5];
  p.tpg = config[6];
  p.region = config[7];
  p.split = config[8];
  p.chunks_per_split = config[9];
  p.res_chunks_per_split = config[10];
  p.co_tiles = config[11];
  p.n_tiles = config[12];
  p.pdl = config[13];
  p.prefetch_bytes = config[14];
  p.staged = config[15];
  p.ring = config[16];
  TORCH_CHECK((p.pdl == 0 || p.pdl == 1) && p.prefetch_bytes >= 0 && p.prefetch_bytes <= (1 << 30) &&
                  (p.staged == 0 || p.staged == 1) && (p.ring == 0 || p.ring == 1),
              "conv_block: pdl, staged and ring must be 0 or 1 and prefetch_bytes in [0, 2^30] (config ", config, ")");
  if (p.ring) {
    // cp.async copies 16-byte pieces: every row of the weights a whole number of them (the plan's
    // part), from 16-byte aligned weights (the tensors': weights that are not, a view off that
    // grid, run through registers instead)
    const int64_t size = kConvElementBytes(p.wdtype);
    TORCH_CHECK(static_cast<int64_t>(p.c_in) * p.k * size % 16 == 0 && (p.rw == nullptr || p.cr * size % 16 == 0) &&
                    (!p.staged || kConvStagedRingBytes(p) <= kConvRingBytes),
                "conv_block: the weight ring (config[16] = 1) takes a plan whose weight rows (C_in * K = ",
                static_cast<int64_t>(p.c_in) * p.k, " values, and the 1x1 residual's ", p.cr,
                ") are whole multiples of 16 bytes and, staged, whose tile's weights fit ", kConvRingBytes,
                " bytes (config ", config, ")");
    const auto aligned = [](const void* w) { return reinterpret_cast<uintptr_t>(w) % 16 == 0; };
    if (!aligned(p.w) || (p.rw != nullptr && !aligned(p.rw))) p.ring = 0;
  }
  if (config.size() == 20) {
    p.x_from = static_cast<int>(config[17]);
    p.x2_from = static_cast<int>(config[18]);
    p.flag_slot = static_cast<int>(config[19]);
    TORCH_CHECK(config[17] >= 0 && config[18] >= 0 && config[19] >= 0 && config[17] < (1 << 30) &&
                    config[18] < (1 << 30) && config[19] < (1 << 30) &&
                    (p.staged || (p.x_from == 0 && p.x2_from == 0 && p.flag_slot == 0)) &&
                    (p.x2_from == 0 || p.x2.ptr != nullptr),
                "conv_block: x_from, x2_from and flag_slot (config[17:20]) are chain entries' numbers (1 + index, 0 for "
                "none) that only a staged plan takes, x2_from with an x2 (config ", config, ")");
  }
  if (p.staged) {
    TORCH_CHECK(conv_block_chain_accepts(p),
                "conv_block: a staged plan takes a block without GroupNorm, a 1x1 residual conv or a head, the whole batch in "
                "one tile of 4, 8 or 16 columns, region x nc <= ", kConvGemvAccumulators, " and an input of at most ",
                kConvStagedBytes, " bytes in shared memory (config ", config, ")");
    return p;
  }
  const int rows = kConvRowsPerCta(p.nc);
  const bool covers_rows = cpg > 0 ? (p.tpg * rows >= p.cpg && p.co_tiles == p.c_out / p.cpg * p.tpg)
                                   : (p.tpg == 1 && static_cast<int64_t>(p.co_tiles) * rows >= p.c_out);
  const int64_t chunk = kConvChunk(p.wdtype, p.nc);
  TORCH_CHECK(covers_rows && p.t_pad >= p.t_out && p.bb * p.t_pad == p.nc &&
                  static_cast<int64_t>(p.bb) * p.n_tiles >= p.batch && p.split >= 1 &&
                  p.split * p.chunks_per_split * chunk >= static_cast<int64_t>(p.c_in) * p.k &&
                  p.split * p.res_chunks_per_split * chunk >= (p.rw != nullptr ? p.cr : 0),
              "conv_block: the plan does not cover the block (config ", config, ")");
  // Scratch: parts holds the split partials (when a region spans CTAs), then the head's shares;
  // counters the regions' arrivals (n_tiles x regions), then the head's (n_tiles).
  const bool split = p.tpg * p.split > 1, head = p.hw != nullptr;
  if (split || head) {
    const at::ScalarType acc = p.wdtype == kF64 ? at::kDouble : at::kFloat;
    const int64_t regions = p.co_tiles / p.tpg;
    const int64_t partials = split ? (p.rw != nullptr ? 2 : 1) * static_cast<int64_t>(p.split) * p.n_tiles * p.c_out * p.nc : 0;
    const int64_t need = partials + (head ? regions * p.n_tiles * p.c_head * p.nc : 0);
    TORCH_CHECK(parts.device() == device && parts.scalar_type() == acc && parts.is_contiguous() &&
                    parts.numel() >= need,
                "conv_block: parts must be a contiguous ", acc, " tensor of at least ", need,
                " elements on ", device);
    const int64_t arrivals = p.n_tiles * regions + (head ? p.n_tiles : 0);
    TORCH_CHECK(counters.device() == device && counters.scalar_type() == at::kInt &&
                    counters.is_contiguous() && counters.numel() >= arrivals,
                "conv_block: counters must be a contiguous int32 tensor of at least ", arrivals, " zeros on ", device);
    if (split) {
      p.parts = parts.data_ptr();
      p.counters = counters.data_ptr<int>();
    }
    if (head) {
      p.head_parts = static_cast<char*>(parts.data_ptr()) + partials * parts.element_size();
      p.head_counters = counters.data_ptr<int>() + p.n_tiles * regions;
    }
  }
  return p;
}

// The tag of an entry's bytes before its tag field: FNV-1a over a key drawn once per process,
// then the bytes, finished by splitmix64's mixer. It tells an entry made by conv_block_params
// (whose checks it passed) from bytes made or changed elsewhere, which the chain kernel would
// follow as pointers; a guard against mistakes, not a cryptographic one.
inline unsigned long long conv_block_params_tag(const ConvBlockParams& p) {
  static const unsigned long long key = [] {
    std::random_device device;
    return (static_cast<unsigned long long>(device()) << 32) ^ device();
  }();
  unsigned long long h = 1469598103934665603ull;
  const auto mix = [&h](unsigned char byte) { h = (h ^ byte) * 1099511628211ull; };
  for (int i = 0; i < 8; ++i) mix(static_cast<unsigned char>(key >> (8 * i)));
  const auto* bytes = reinterpret_cast<const unsigned char*>(&p);
  for (size_t i = 0; i < offsetof(ConvBlockParams, tag); ++i) mix(bytes[i]);
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
  return h ^ (h >> 31);
}

// One chain entry as bytes (a CPU uint8 tensor of sizeof(ConvBlockParams)), tagged.
inline at::Tensor conv_block_params_bytes(const ConvBlockParams& p) {
  at::Tensor bytes = at::empty({static_cast<int64_t>(sizeof(ConvBlockParams))}, at::TensorOptions().dtype(at::kByte));
  auto* entry = static_cast<ConvBlockParams*>(bytes.data_ptr());
  std::memcpy(entry, &p, sizeof(ConvBlockParams));
  entry->tag = conv_block_params_tag(*entry);
  return bytes;
}

struct ChainCheck {
  int count = 0, wdtype = kF32;
  int ring_bytes = 0;  // the largest weight ring of the entries (dynamic shared memory)
  ChainFlags flags;    // the flagged exchange (none without a flags tensor)
  long long* probe = nullptr;  // the probe's rows (kChainProbeFields), none without a probe tensor
};

inline bool same_operand(const Operand& a, const Operand& b) {
  return a.ptr == b.ptr && a.dtype == b.dtype && a.sb == b.sb && a.sc == b.sc && a.st == b.st;
}

// The flagged exchange of a chain (kernels/conv_block.cuh, ChainFlags): each entry's links
// checked (x_from / x2_from name an earlier entry that writes its flagged slot, whose output is
// that operand, shape for shape, and that no entry between wrote over), and whether the chain
// may run without grid barriers: every entry staged and writing its slot, every operand an
// earlier entry wrote read through a link, but an in-place step's sample, which the same CTAs
// wrote (the latest writer of its memory is an entry with the same output and tiles). Operands
// are told apart by address: the sampler's buffers do not overlap. `flags`: int64 words, [0]
// the launch count and the CTAs done (two 32-bit counters, zeros at first), then the slots.
inline void check_chain_links(const std::vector<ConvBlockParams>& e, const std::optional<at::Tensor>& flags,
                              const at::Tensor& device_params, ChainCheck& chain) {
  std::unordered_map<const void*, int> writer;  // address -> the latest entry that wrote it
  auto latest = [&](const void* ptr) {
    const auto it = ptr == nullptr ? writer.end() : writer.find(ptr);
    return it == writer.end() ? -1 : it->second;
  };
  int64_t slot_words = 0;
  bool barrier_free = flags.has_value();
  for (int i = 0; i < static_cast<int>(e.size()); ++i) {
    const ConvBlockParams& p = e[i];
    TORCH_CHECK(p.flag_slot == 0 || p.flag_slot == i + 1, "conv_block_chain: entry ", i, " writes flagged slot ",
                p.flag_slot - 1, "; an entry writes its own");
    if (p.flag_slot > 0) {
      slot_words = std::max(slot_words, static_cast<int64_t>(p.batch) * p.c_out * p.t_out * kFlaggedWords(p.out.dtype));
    }
    auto link = [&](int from, const Operand& a, int channels, const char* name) {
      const int w = latest(a.ptr);
      if (from == 0) return w < 0;  // read directly: fine without a barrier only if no entry wrote it
      TORCH_CHECK(from - 1 == w && e[w].flag_slot == from && same_operand(e[w].out, a) && e[w].c_out == channels &&
                      e[w].t_out == p.t_in && e[w].batch == p.batch,
                  "conv_block_chain: entry ", i, " reads ", name, " from entry ", from - 1,
                  "'s flagged slot, but that entry is not the last to write ", name, " (",
                  w < 0 ? std::string("none did") : "entry " + std::to_string(w) + " did",
                  ") or does not write it there, shape for shape");
      return true;
    };
    bool linked = link(p.x_from, p.x, p.c1, "x");
    if (p.x2.ptr != nullptr) linked = link(p.x2_from, p.x2, p.c_in - p.c1, "x2") && linked;
    for (const Operand* a : {&p.res, &p.res2, &p.cond, &p.scale, &p.noise}) linked = linked && latest(a->ptr) < 0;
    const int s = latest(p.sample.ptr);
    linked = linked && (s < 0 || (p.sample.ptr == p.out_ptr && same_operand(e[s].out, p.out) &&
                                  e[s].region == p.region && e[s].co_tiles == p.co_tiles && e[s].staged));
    barrier_free = barrier_free && p.staged && p.flag_slot == i + 1 && linked;
    writer[p.out_ptr] = i;
  }
  if (!flags.has_value()) return;
  const int64_t need = 1 + static_cast<int64_t>(e.size()) * slot_words;
  TORCH_CHECK(flags->scalar_type() == at::kLong && flags->is_contiguous() && flags->device() == device_params.device() &&
                  flags->numel() >= need,
              "conv_block_chain: flags must be a contiguous int64 tensor of at least ", need, " words (1 + ", e.size(),
              " entries x ", slot_words, ") on ", device_params.device(), ", got ", flags->numel(), " ",
              flags->scalar_type(), " on ", flags->device());
  chain.flags.words = static_cast<unsigned*>(flags->data_ptr());
  chain.flags.slots = static_cast<unsigned long long*>(flags->data_ptr()) + 1;
  chain.flags.slot_words = slot_words;
  chain.flags.barrier_free = barrier_free ? 1 : 0;
}

// A chain's checks on the host: params, the entries' bytes (CPU) as conv_block_params made them
// (their tags), every entry a plan the chain kernel runs, one weight dtype; device_params their
// copy (as many bytes; the kernel reads it, and it is not compared: that would synchronise) and
// barrier two int32 words, contiguous.
inline ChainCheck check_conv_block_chain(const at::Tensor& params, const at::Tensor& device_params,
                                         const at::Tensor& barrier, int64_t grid,
                                         const std::optional<at::Tensor>& flags = std::nullopt,
                                         const std::optional<at::Tensor>& probe = std::nullopt) {
  constexpr int64_t kBytes = sizeof(ConvBlockParams);
  TORCH_CHECK(params.device().is_cpu() && params.scalar_type() == at::kByte && params.is_contiguous() &&
                  params.dim() == 1 && params.numel() > 0 && params.numel() % kBytes == 0,
              "conv_block_chain: params must be a contiguous CPU uint8 tensor of a whole number (> 0) of ", kBytes,
              "-byte entries from conv_block_params, got ", params.sizes(), " ", params.scalar_type(), " on ",
              params.device());
  TORCH_CHECK(device_params.scalar_type() == at::kByte && device_params.is_contiguous() &&
                  device_params.numel() == params.numel(),
              "conv_block_chain: device_params must be a contiguous uint8 copy of params (", params.numel(),
              " bytes), got ", device_params.numel(), " ", device_params.scalar_type());
  TORCH_CHECK(barrier.scalar_type() == at::kInt && barrier.is_contiguous() && barrier.numel() >= 2,
              "conv_block_chain: barrier must be a contiguous int32 tensor of at least 2 words");
  TORCH_CHECK(grid >= 1 && grid <= (1 << 20), "conv_block_chain: grid must be in [1, 2^20], got ", grid);
  ChainCheck chain;
  chain.count = static_cast<int>(params.numel() / kBytes);
  std::vector<ConvBlockParams> entries(chain.count);
  for (int i = 0; i < chain.count; ++i) {
    ConvBlockParams& p = entries[i];
    std::memcpy(&p, params.data_ptr<uint8_t>() + i * kBytes, kBytes);
    TORCH_CHECK(p.tag == conv_block_params_tag(p), "conv_block_chain: entry ", i,
                " was not made by conv_block_params in this process, or was changed since");
    if (i == 0) chain.wdtype = p.wdtype;
    TORCH_CHECK(p.wdtype == chain.wdtype, "conv_block_chain: every block must have the first one's weight dtype");
    TORCH_CHECK(conv_block_chain_accepts(p), "conv_block_chain: block ", i, " has a plan of ", p.nc,
                " columns; the chain kernel takes at most ", kConvChainMaxColumns);
    chain.ring_bytes = std::max(chain.ring_bytes, kConvRingSmemBytes(p));
  }
  check_chain_links(entries, flags, device_params, chain);
  if (probe.has_value()) {
    const int64_t need = static_cast<int64_t>(chain.count) * grid * kChainProbeFields;
    TORCH_CHECK(probe->scalar_type() == at::kLong && probe->is_contiguous() && probe->numel() >= need &&
                    probe->device() == device_params.device(),
                "conv_block_chain: probe must be a contiguous int64 tensor of at least ", need, " values (", chain.count,
                " entries x grid ", grid, " x ", kChainProbeFields, ") on ", device_params.device(), ", got ", probe->sizes(),
                " ", probe->scalar_type(), " on ", probe->device());
    chain.probe = static_cast<long long*>(probe->data_ptr());
  }
  return chain;
}

}  // namespace dp_fast
