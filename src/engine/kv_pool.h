// One KV-cache memory pool that several sequences share, handed out in
// blocks of positions: a sequence holds only the blocks its tokens fill, not
// a whole context's worth, so N parallel sequences of short chats take the
// memory of short chats (not N full contexts), and a budget bounds all of
// them together.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "common/result.h"
#include "engine/tensor_type.h"

namespace foreshore::engine {

class Model;

class KvPool {
 public:
  // Positions per block; a power of two so that a position's block is a shift.
  static constexpr int32_t kBlockTokens = 32;

  // A pool of at most `budget_bytes` of keys and values stored as kv_type
  // (F32; F16; or Q8_0, a quarter of F32, when the head size is a multiple of
  // 32) for `model`; memory is taken from the system only as blocks are
  // first used. An error when the budget holds less than one block.
  static Result<std::shared_ptr<KvPool>> create(const Model& model, TensorType kv_type,
                                                uint64_t budget_bytes);
  // Bytes of one position of one layer's keys (or values) as kv_type; an
  // error naming the types that work when kv_type cannot store this model's.
  static Result<size_t> row_bytes_for(const Model& model, TensorType kv_type);

  // One block: keys then values, each [layer][kBlockTokens][row_bytes].
  size_t block_bytes() const { return block_bytes_; }
  size_t row_bytes() const { return row_bytes_; }
  int32_t layer_count() const { return layer_count_; }
  TensorType kv_type() const { return kv_type_; }
  const Model* model() const { return model_; }

  int64_t blocks_total() const { return capacity_; }
  int64_t blocks_used() const;
  int64_t blocks_free() const { return blocks_total() - blocks_used(); }
  // Tokens the whole pool holds.
  int64_t capacity_tokens() const { return capacity_ * kBlockTokens; }

  // Takes `count` blocks, all or none (false, nothing taken). Thread-safe.
  // Blocks are allocated on first use: std::bad_alloc (nothing taken) when
  // the system refuses one.
  bool acquire(size_t count, std::vector<uint8_t*>& into);
  // Gives blocks back; they are kept for the next acquire. Thread-safe.
  void release(std::span<uint8_t* const> blocks);

 private:
  KvPool() = default;
  const Model* model_ = nullptr;
  TensorType kv_type_ = TensorType::kF16;
  size_t row_bytes_ = 0;
  size_t block_bytes_ = 0;
  int32_t layer_count_ = 0;
  int64_t capacity_ = 0;
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<uint8_t[]>> storage_;  // every block ever taken from the system
  std::vector<uint8_t*> free_;                       // of those, the ones no sequence holds
};

}  // namespace foreshore::engine
