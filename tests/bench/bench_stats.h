// Summaries of a benchmark's rounds, shared by the benchmarks in tests/bench/ that repeat a
// measurement: the median, and the spread between the fastest and the slowest round.
#ifndef PHYSMEM_TESTS_BENCH_BENCH_STATS_H_
#define PHYSMEM_TESTS_BENCH_BENCH_STATS_H_

#include <algorithm>
#include <vector>

namespace physmem {

// The median of the rounds (the upper one of an even count).
inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// How far the largest round is above the smallest, in percent.
inline double Spread(const std::vector<double>& v) {
  return 100.0 * (*std::max_element(v.begin(), v.end()) / *std::min_element(v.begin(), v.end()) - 1);
}

}  // namespace physmem

#endif  // PHYSMEM_TESTS_BENCH_BENCH_STATS_H_
