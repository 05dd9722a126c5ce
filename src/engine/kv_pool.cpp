#include "engine/kv_pool.h"

#include <string>

#include "engine/model.h"

namespace foreshore::engine {

Result<std::shared_ptr<KvPool>> KvPool::create(const Model& model, TensorType kv_type,
                                               uint64_t budget_bytes) {
  if (kv_type != TensorType::kF32 && kv_type != TensorType::kF16) {
    return make_error(ErrorKind::kInvalidArgument,
                      "a KV cache is stored as F32 or F16, not " +
                          tensor_type_name(static_cast<uint32_t>(kv_type)));
  }
  const ModelConfig& c = model.config();
  std::shared_ptr<KvPool> pool(new KvPool());
  pool->model_ = &model;
  pool->kv_type_ = kv_type;
  pool->layer_count_ = c.layer_count;
  pool->row_bytes_ = static_cast<size_t>(c.head_count_kv) * static_cast<size_t>(c.head_dim) *
                     (kv_type == TensorType::kF32 ? sizeof(float) : sizeof(uint16_t));
  pool->block_bytes_ =
      2 * static_cast<size_t>(c.layer_count) * kBlockTokens * pool->row_bytes_;
  pool->capacity_ = pool->block_bytes_ == 0
                        ? 0
                        : static_cast<int64_t>(budget_bytes / pool->block_bytes_);
  if (pool->capacity_ < 1) {
    return make_error(ErrorKind::kResourceExhausted,
                      "a KV memory budget of " + std::to_string(budget_bytes) +
                          " bytes holds no block of " + std::to_string(kBlockTokens) +
                          " tokens of model '" + c.name + "' (" +
                          std::to_string(pool->block_bytes_) + " bytes); raise the budget");
  }
  return pool;
}

int64_t KvPool::blocks_used() const {
  std::lock_guard lock(mu_);
  return static_cast<int64_t>(storage_.size() - free_.size());
}

bool KvPool::acquire(size_t count, std::vector<uint8_t*>& into) {
  std::lock_guard lock(mu_);
  const size_t used = storage_.size() - free_.size();
  if (used + count > static_cast<size_t>(capacity_)) return false;
  for (size_t i = 0; i < count; ++i) {
    if (free_.empty()) {
      // Not zeroed: a position is always written before it is read.
      storage_.push_back(std::make_unique_for_overwrite<uint8_t[]>(block_bytes_));
      into.push_back(storage_.back().get());
    } else {
      into.push_back(free_.back());
      free_.pop_back();
    }
  }
  return true;
}

void KvPool::release(std::span<uint8_t* const> blocks) {
  std::lock_guard lock(mu_);
  free_.insert(free_.end(), blocks.begin(), blocks.end());
}

}  // namespace foreshore::engine
