#include "picture/arena_map_proto.h"

#include <bit>

#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "allocator/migratetype.h"
#include "allocator/stats.h"

namespace physmem {

void ArenaMapToProto(const ArenaMap& map, v1::GetArenaMapResponse* out) {
  out->set_target(map.target_name);
  out->set_page_shift(map.page_shift);
  out->set_pageblock_order(map.pageblock_order);
  out->set_nr_orders(map.nr_orders);
  out->set_pageblocks_per_entry(map.pageblocks_per_entry);
  for (const ArenaMapZone& z : map.zones) {
    v1::ArenaMapZone* pz = out->add_zones();
    pz->set_zone(std::string(zone_name(z.type)));
    pz->set_first_pfn(z.first_pfn);
    pz->set_start_pfn(z.start_pfn);
    pz->set_end_pfn(z.end_pfn);
    std::string* types = pz->mutable_migratetype();
    std::string* orders = pz->mutable_max_free_order();
    for (const ArenaMapEntry& e : z.entries) {
      pz->add_free_pages(e.free_pages);
      pz->add_allocated_pages(e.allocated_pages);
      types->push_back(static_cast<char>(e.migratetype));
      orders->push_back(static_cast<char>(e.max_free_order + 1));
    }
    for (uint64_t n : z.nr_free) pz->add_nr_free(n);
  }
}

absl::StatusOr<ArenaMap> ArenaMapFromProto(const v1::GetArenaMapResponse& in) {
  ArenaMap map;
  map.target_name = in.target();
  if (in.page_shift() < 9 || in.page_shift() > 20 || in.nr_orders() < 1 || in.nr_orders() > kMaxNrOrders ||
      in.pageblock_order() > 30 || !std::has_single_bit(in.pageblocks_per_entry()) ||
      in.pageblocks_per_entry() > (1u << 30)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "arena map: page_shift %u, nr_orders %u, pageblock_order %u, pageblocks_per_entry %u: expected page_shift "
        "9..20, nr_orders 1..%u, pageblock_order <= 30 and a power of two of pageblocks an entry",
        in.page_shift(), in.nr_orders(), in.pageblock_order(), in.pageblocks_per_entry(), kMaxNrOrders));
  }
  map.page_shift = in.page_shift();
  map.pageblock_order = in.pageblock_order();
  map.nr_orders = in.nr_orders();
  map.pageblocks_per_entry = in.pageblocks_per_entry();
  const uint64_t ppe = map.pages_per_entry();
  for (const v1::ArenaMapZone& pz : in.zones()) {
    const std::optional<ZoneType> type = ParseZoneName(pz.zone());
    const std::string name = absl::CHexEscape(pz.zone().substr(0, 32));
    if (!type) return absl::InvalidArgumentError(absl::StrFormat("arena map: unknown zone '%s'", name));
    const size_t n = static_cast<size_t>(pz.free_pages_size());
    if (static_cast<size_t>(pz.allocated_pages_size()) != n || pz.migratetype().size() != n ||
        pz.max_free_order().size() != n) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "arena map: zone %s has %u free_pages, %u allocated_pages, %u migratetype and %u max_free_order entries; "
          "expected one of each an entry",
          name, n, pz.allocated_pages_size(), pz.migratetype().size(), pz.max_free_order().size()));
    }
    ArenaMapZone z;
    z.type = *type;
    z.first_pfn = pz.first_pfn();
    z.start_pfn = pz.start_pfn();
    z.end_pfn = pz.end_pfn();
    if (z.first_pfn % ppe != 0 || z.start_pfn < z.first_pfn || z.end_pfn < z.start_pfn ||
        (z.end_pfn - z.first_pfn + ppe - 1) / ppe != n) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "arena map: zone %s: first_pfn %#x, start_pfn %#x, end_pfn %#x and %u entries of %u pages do not agree", name,
          z.first_pfn, z.start_pfn, z.end_pfn, n, ppe));
    }
    for (size_t i = 0; i < n; ++i) {
      ArenaMapEntry e;
      e.free_pages = pz.free_pages(static_cast<int>(i));
      e.allocated_pages = pz.allocated_pages(static_cast<int>(i));
      e.migratetype = static_cast<uint8_t>(pz.migratetype()[i]);
      e.max_free_order = static_cast<int8_t>(static_cast<uint8_t>(pz.max_free_order()[i]) - 1);
      if (uint64_t{e.free_pages} + e.allocated_pages > z.entry_span_pages(i, ppe) || e.migratetype >= MIGRATE_TYPES ||
          e.max_free_order >= static_cast<int>(map.nr_orders) || e.max_free_order < -1) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "arena map: zone %s entry %u: %u free + %u allocated pages in a span of %u, migratetype %u, max free "
            "order %d: expected pages within the span, migratetype < %d and order < %u",
            name, i, e.free_pages, e.allocated_pages, z.entry_span_pages(i, ppe), e.migratetype, e.max_free_order,
            MIGRATE_TYPES, map.nr_orders));
      }
      z.entries.push_back(e);
    }
    z.nr_free.assign(pz.nr_free().begin(), pz.nr_free().end());
    map.zones.push_back(std::move(z));
  }
  return map;
}

}  // namespace physmem
