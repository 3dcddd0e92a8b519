// Memory for the packed int4 weights: fresh anonymous pages, asked for as transparent huge
// pages. Decode streams every weight byte once per token; with 4 KiB pages that is a TLB
// miss every 4 KiB and the hardware prefetchers restart at each page (int4 GEMV on 1 thread
// ~1.3x faster on huge pages on Zen 4, session 6). Where THP is "never" these are plain pages.
#pragma once

#include <torch/torch.h>

namespace cpuchat {

// A uint8 tensor of `bytes` zero bytes that owns its mapping. The data starts on a 2 MiB
// boundary and its whole 2 MiB pieces are advised MADV_HUGEPAGE (the tail keeps small pages,
// so no more than `bytes` is ever touched). Throws std::bad_alloc when the mapping fails.
torch::Tensor anonymous_bytes(int64_t bytes);

}  // namespace cpuchat
