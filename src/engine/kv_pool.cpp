#include "engine/kv_pool.h"

#include <string>

#include "engine/model.h"

namespace foreshore::engine {

Result<size_t> KvPool::row_bytes_for(const Model& model, TensorType kv_type) {
  const ModelConfig& c = model.config();
  const size_t values = static_cast<size_t>(c.head_count_kv) * static_cast<size_t>(c.head_dim);
  switch (kv_type) {
    case TensorType::kF32:
      return values * sizeof(float);
    case TensorType::kF16:
      return values * sizeof(uint16_t);
    case TensorType::kQ8_0:
      // Each head's keys must start a block of 32, as attention reads per head.
      if (c.head_dim % 32 != 0) {
        return make_error(
            ErrorKind::kUnsupported,
            "a Q8_0 KV cache needs a head size that is a multiple of 32, and model '" + c.name +
                "' has " + std::to_string(c.head_dim) + "; use F16 (the default) or F32");
      }
      return values / 32 * 34;
    default:
      return make_error(ErrorKind::kUnsupported,
                        "a KV cache of type " + tensor_type_name(static_cast<uint32_t>(kv_type)) +
                            " is not supported; use F16 (the default), Q8_0 or F32");
  }
}

Result<std::shared_ptr<KvPool>> KvPool::create(const Model& model, TensorType kv_type,
                                               uint64_t budget_bytes) {
  const ModelConfig& c = model.config();
  std::shared_ptr<KvPool> pool(new KvPool());
  pool->model_ = &model;
  pool->kv_type_ = kv_type;
  pool->layer_count_ = c.layer_count;
  FSH_ASSIGN_OR_RETURN(pool->row_bytes_, row_bytes_for(model, kv_type));
  pool->block_bytes_ = 2 * static_cast<size_t>(c.layer_count) * kBlockTokens * pool->row_bytes_;
  pool->capacity_ =
      pool->block_bytes_ == 0 ? 0 : static_cast<int64_t>(budget_bytes / pool->block_bytes_);
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
  const size_t before = into.size();
  try {
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
  } catch (...) {
    // All or nothing: the blocks taken so far go back to the free list.
    free_.insert(free_.end(), into.begin() + static_cast<std::ptrdiff_t>(before), into.end());
    into.resize(before);
    throw;
  }
  return true;
}

void KvPool::release(std::span<uint8_t* const> blocks) {
  std::lock_guard lock(mu_);
  free_.insert(free_.end(), blocks.begin(), blocks.end());
}

}  // namespace foreshore::engine
