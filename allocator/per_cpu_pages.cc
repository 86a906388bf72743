#include "allocator/per_cpu_pages.h"

#include <algorithm>
#include <bit>

namespace physmem {

uint32_t ZoneBatchsize(uint64_t managed_pages, unsigned page_shift) {
  uint64_t batch = std::min<uint64_t>(managed_pages >> 10, (uint64_t{1} << 20) >> page_shift);
  batch /= 4;  // the kernel effectively multiplies by 4 below
  if (batch < 1) batch = 1;
  batch = std::bit_floor(batch + batch / 2) - 1;
  // zone_set_pageset_high_and_batch(): new_batch = max(1, zone_batchsize(zone)).
  return static_cast<uint32_t>(std::max<uint64_t>(batch, 1));
}

uint32_t ZoneHighsize(uint64_t low_wmark, uint32_t batch, int nr_cpus) {
  const uint64_t high = low_wmark / static_cast<uint64_t>(std::max(nr_cpus, 1));
  return static_cast<uint32_t>(std::max<uint64_t>(high, uint64_t{batch} << 2));
}

namespace {

std::array<uint32_t, NR_PCP_ORDERS> BatchBlocks(uint32_t batch) {
  std::array<uint32_t, NR_PCP_ORDERS> b;
  for (unsigned o = 0; o < NR_PCP_ORDERS; ++o) b[o] = o == 0 ? batch : std::max<uint32_t>(batch >> o, 2);
  return b;
}

std::array<uint32_t, NR_PCP_ORDERS> HighBlocks(uint32_t high, const std::array<uint32_t, NR_PCP_ORDERS>& batch_blocks) {
  std::array<uint32_t, NR_PCP_ORDERS> h;
  // At least a batch beyond one refill, so a refill never overflows an empty list.
  for (unsigned o = 0; o < NR_PCP_ORDERS; ++o) h[o] = std::max<uint32_t>(high >> o, 2 * batch_blocks[o]);
  return h;
}

// Ring slots per list: above every high_blocks_, so that Push() may use PushHotWithin().
uint32_t RingCapacity(const std::array<uint32_t, NR_PCP_ORDERS>& high_blocks) {
  return std::bit_ceil(*std::max_element(high_blocks.begin(), high_blocks.end()) + 1);
}

}  // namespace

PerCpuPages::PerCpuPages(int nr_cpus, uint32_t batch, uint32_t high, bool enabled)
    : nr_cpus_(nr_cpus),
      batch_(batch),
      high_(high),
      batch_blocks_(BatchBlocks(batch)),
      high_blocks_(HighBlocks(high, batch_blocks_)),
      rings_(nr_cpus, NR_PCP_LISTS, RingCapacity(high_blocks_)) {
  enabled_ = enabled && rings_.enabled();
}

void PerCpuPages::Snapshot(int cpu, unsigned order, int mt, std::vector<uint32_t>* out) const {
  rings_.Snapshot(cpu, order_to_pindex(mt, order), out);
}

uint64_t PerCpuPages::count_pages(int cpu) const {
  uint64_t pages = 0;
  for (unsigned o = 0; o < NR_PCP_ORDERS; ++o) {
    for (int mt = 0; mt < MIGRATE_PCPTYPES; ++mt) pages += uint64_t{rings_.Count(cpu, order_to_pindex(mt, o))} << o;
  }
  return pages;
}

uint64_t PerCpuPages::pushes(unsigned order) const {
  uint64_t n = 0;
  for (int cpu = 0; cpu < nr_cpus_; ++cpu) {
    for (int mt = 0; mt < MIGRATE_PCPTYPES; ++mt) n += rings_.Pushes(cpu, order_to_pindex(mt, order));
  }
  return n;
}

PcpCpuStats PerCpuPages::Stats(int cpu) const {
  PcpCpuStats s;
  s.cpu = cpu;
  s.count = count_pages(cpu);
  const PerCpuRingCounters c = rings_.Counters(cpu);
  s.hits = c.hits;
  s.frees = c.pushes;
  s.refills = c.refills;
  s.drains = c.drains;
  s.remote_drains = c.remote_drains;
  return s;
}

}  // namespace physmem
