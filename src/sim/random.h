// Seeded random numbers with fixed algorithms, so that a trace or a
// simulation made from a seed is the same with every compiler and standard
// library (std:: distributions are implementation-defined).
#pragma once

#include <cmath>
#include <cstdint>

namespace foreshore::sim {

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}

  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // In (0, 1): never 0, so that log() is always finite.
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-53; }
  uint64_t below(uint64_t n) { return next() % n; }
  double exponential(double rate) { return -std::log(uniform()) / rate; }
  double normal(double mean, double sd) {
    // Box-Muller; one value per call keeps the stream position simple.
    const double r = std::sqrt(-2.0 * std::log(uniform()));
    return mean + sd * r * std::cos(2.0 * M_PI * uniform());
  }
  double log_normal(double median, double sigma) { return median * std::exp(normal(0.0, sigma)); }

 private:
  uint64_t state_;
};

// A stream of its own for each (seed, request, purpose), so that every policy
// sees the same draw for the same request whatever order it is replayed in.
inline SplitMix64 stream_for(uint64_t seed, uint64_t index, uint64_t purpose) {
  SplitMix64 mix(seed ^ (index * 0x9e3779b97f4a7c15ull) ^ (purpose << 56));
  return SplitMix64(mix.next());
}

}  // namespace foreshore::sim
