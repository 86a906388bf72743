#include "trace/replay_report.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "allocator/gfp.h"

namespace physmem::trace {
namespace {

absl::string_view Absl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Columns of perf's order table: migratetypes 0..4, as perf prints (MAX_MIGRATE_TYPES - 1).
constexpr int kPerfColumns = 5;
constexpr const char* kPerfColumnNames[kPerfColumns] = {"Unmovable", "Movable", "Reclaimable", "HighAtomic",
                                                         "CMA/Isolate"};

std::string PerfLine(const char* label, uint64_t count, uint64_t bytes) {
  return absl::StrFormat("%-30s: %16u   [ %16u KB ]\n", label, count, bytes / 1024);
}

// --- JSON -------------------------------------------------------------------------------------
std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (const char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      out += absl::StrFormat("\\u%04x", c);
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

template <typename Array>
std::string JsonArray(const Array& values) {
  return absl::StrCat("[", absl::StrJoin(values, ","), "]");
}

std::string JsonCountsByName(const auto& names, const auto& values) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < values.size(); ++i) {
    if (values[i] != 0) parts.push_back(absl::StrCat(Quote(names[i]), ":", values[i]));
  }
  return absl::StrCat("{", absl::StrJoin(parts, ","), "}");
}

constexpr const char* kPcpTypeNames[kNrPcpMigratetypes] = {"Unmovable", "Movable", "Reclaimable"};

// {"fallbacks":F,"claims":C,"steals":S,"claims_by_migratetype":{...},"steals_by_migratetype":{...}}
std::string JsonMigrate(const MigrateFallbacks& m) {
  return absl::StrCat("{\"fallbacks\":", m.fallbacks(), ",\"claims\":", m.total_claims(), ",\"steals\":", m.total_steals(),
                      ",\"claims_by_migratetype\":", JsonCountsByName(kPcpTypeNames, m.claims),
                      ",\"steals_by_migratetype\":", JsonCountsByName(kPcpTypeNames, m.steals), "}");
}

std::string JsonDaemon(const ReplayResult& r) {
  if (r.mode != "daemon") return "null";
  const DaemonReplayInfo& d = r.daemon;
  return absl::StrCat("{\"address\":", Quote(d.address), ",\"lease_id\":", d.lease_id,
                      absl::StrFormat(",\"pace\":%g", d.pace), ",\"alloc_bulk_calls\":", d.alloc_bulk_calls,
                      ",\"bulk_pages\":", d.bulk_pages, ",\"bulk_short\":", d.bulk_short, ",\"alloc_calls\":", d.alloc_calls,
                      ",\"free_bulk_calls\":", d.free_bulk_calls, ",\"refusals_without_call\":", d.refusals_without_call, ",\"pages_allocated_at_end\":", d.pages_allocated_at_end,
                      ",\"lease_pages_at_end\":", d.lease_pages_at_end, ",\"lease_kept\":", d.lease_kept ? "true" : "false",
                      absl::StrFormat(",\"slept_seconds\":%.6f}", d.slept_seconds));
}

std::string JsonReplay(const ReplayResult& r) {
  const ReplayCounts& c = r.counts;
  std::vector<std::string> reasons;
  for (const auto& [reason, n] : c.failures_by_reason) reasons.push_back(absl::StrCat(Quote(reason), ":", n));
  std::vector<std::string> samples;
  for (const FragmentationSample& s : r.samples) {
    std::vector<std::string> zones;
    for (const FragmentationSample::Zone& z : s.zones) {
      zones.push_back(absl::StrCat("{\"zone\":", Quote(z.name), ",\"managed_pages\":", z.managed_pages, ",\"free_pages\":", z.free_pages,
                                   ",\"fragmentation_index\":", JsonArray(z.fragmentation_index), "}"));
    }
    samples.push_back(absl::StrFormat("{\"ops_done\":%u,\"trace_seconds\":%.6f,\"fallbacks\":%u,\"claims\":%u,"
                                      "\"steals\":%u,\"zones\":[%s]}",
                                      s.ops_done, s.trace_seconds, s.migrate.fallbacks(), s.migrate.total_claims(),
                                      s.migrate.total_steals(), absl::StrJoin(zones, ",")));
  }
  std::vector<std::string_view> class_names(kGfpClassNames.begin(), kGfpClassNames.end());
  std::vector<std::string_view> mt_names(kMigratetypeNames.begin(), kMigratetypeNames.end());
  return absl::StrCat(
      "{\"config\":", Quote(r.config_name), ",\"mode\":", Quote(r.mode), ",\"target\":", Quote(r.target),
      ",\"min_free_kbytes\":", r.min_free_kbytes, ",\"pcp_requested\":", r.pcp_requested ? "true" : "false",
      ",\"pcp_active\":", r.pcp_active ? "true" : "false",
      ",\"thread_pages_requested\":", r.thread_pages_requested ? "true" : "false",
      ",\"thread_pages_active\":", r.thread_pages_active ? "true" : "false",
      ",\"page_group_by_mobility\":", r.group_by_mobility ? "true" : "false", ",\"threads\":", r.threads,
      ",\"cpu_mapping\":", Quote(r.cpu_mapping), ",\"allocs\":", c.allocs, ",\"alloc_failures\":", c.alloc_failures,
      ",\"frees\":", c.frees, ",\"free_of_refused\":", c.free_of_refused, ",\"free_errors\":", c.free_errors,
      ",\"failures_by_reason\":{", absl::StrJoin(reasons, ","), "}",
      ",\"allocs_by_order\":", JsonArray(c.allocs_by_order), ",\"failures_by_order\":", JsonArray(c.failures_by_order),
      ",\"frees_by_order\":", JsonArray(c.frees_by_order),
      ",\"allocs_by_gfp_class\":", JsonCountsByName(class_names, c.allocs_by_gfp_class),
      ",\"failures_by_gfp_class\":", JsonCountsByName(class_names, c.failures_by_gfp_class),
      ",\"allocs_by_migratetype\":", JsonCountsByName(mt_names, c.allocs_by_migratetype),
      ",\"failures_by_migratetype\":", JsonCountsByName(mt_names, c.failures_by_migratetype),
      ",\"blocks_allocated_at_end\":", r.blocks_allocated_at_end, ",\"migrate\":", JsonMigrate(r.migrate),
      ",\"fragmentation\":[", absl::StrJoin(samples, ","), "]",
      ",\"final_buddyinfo\":", Quote(r.final_buddyinfo), ",\"final_pagetypeinfo\":", Quote(r.final_pagetypeinfo),
      ",\"daemon\":", JsonDaemon(r),
      absl::StrFormat(",\"wall_seconds\":%.6f,\"ops_per_second\":%.0f}", r.wall_seconds, r.ops_per_second));
}

// The zone with the most pages in use at the end: where the replay's traffic went.
size_t MainZone(const ReplayResult& r) {
  size_t best = 0;
  if (r.samples.empty()) return 0;
  const auto& zones = r.samples.back().zones;
  auto used = [&](size_t i) { return zones[i].managed_pages - std::min(zones[i].managed_pages, zones[i].free_pages); };
  for (size_t i = 1; i < zones.size(); ++i) {
    if (used(i) > used(best)) best = i;
  }
  return best;
}

std::string Index(int thousandths) {
  if (thousandths == -1000) return "-1";
  return absl::StrFormat("%.3f", thousandths / 1000.0);
}

}  // namespace

std::string FormatTraceText(const TraceReadStats& s, const ReplayPlan& plan) {
  std::string out = "TRACE\n=====\n";
  absl::StrAppendFormat(&out, "%-30s: %u (%u bytes)\n", "Lines read", s.lines, s.bytes);
  for (int t = 0; t < kNrPageEventTypes; ++t) {
    absl::StrAppendFormat(&out, "  %-28s: %u\n", Absl(kPageEventNames[t]), s.events[t]);
  }
  absl::StrAppendFormat(&out, "  %-28s: %u\n", "other events (skipped)", s.unknown_events);
  for (const auto& [name, n] : s.unknown_event_names) absl::StrAppendFormat(&out, "    %s: %u\n", name, n);
  absl::StrAppendFormat(&out, "  %-28s: %u\n", "call-chain lines", s.callchain_lines);
  absl::StrAppendFormat(&out, "  %-28s: %u\n", "comment and blank lines", s.comment_lines + s.blank_lines);
  absl::StrAppendFormat(&out, "  %-28s: %u\n", "malformed lines (skipped)", s.malformed_lines);
  for (const LineError& e : s.first_errors) absl::StrAppendFormat(&out, "    line %u: %s\n", e.line, e.reason);
  if (s.malformed_lines > s.first_errors.size()) {
    absl::StrAppendFormat(&out, "    ... and %u more\n", s.malformed_lines - s.first_errors.size());
  }
  absl::StrAppendFormat(&out, "%-30s: %u%s\n", "Events lost by the kernel", s.lost_events,
                        s.lost_events ? absl::StrCat(" (in ", s.lost_markers, " LOST notices: the replay misses them)") : "");
  absl::StrAppendFormat(&out, "%-30s: %.3f s on %u CPUs (%.0f page events/s)\n", "Trace span", s.duration_seconds(),
                        plan.nr_cpus, s.duration_seconds() > 0 ? s.page_events() / s.duration_seconds() : 0.0);
  uint64_t allocs = 0, frees = 0;
  for (const ReplayOp& op : plan.ops) (op.kind == ReplayOpKind::kAlloc ? allocs : frees)++;
  absl::StrAppendFormat(&out, "%-30s: %u allocations, %u frees\n", "To replay", allocs, frees);
  absl::StrAppendFormat(&out, "%-30s: %u kernel failures, %u frees of pages allocated before the trace,\n"
                        "%32s%u frees of another order than allocated, %u allocations of a live pfn,\n"
                        "%32s%u mm_page_free_batched (repeats of mm_page_free), %u reference events\n",
                        "Not replayed", plan.failed_allocs, plan.free_only, "", plan.free_order_mismatch,
                        plan.realloc_of_live_pfn, "", plan.free_batched, plan.reference_events);
  absl::StrAppendFormat(&out, "%-30s: %u\n", "Allocated, never freed in trace", plan.live_at_end);
  return out;
}

std::string FormatPerfKmemSummary(const PerfKmemSummary& p) {
  std::string out = "\nSUMMARY (page allocator)\n========================\n";
  out += PerfLine("Total allocation requests", p.alloc_requests, p.alloc_bytes);
  out += PerfLine("Total free requests", p.free_requests, p.free_bytes);
  out += "\n";
  out += PerfLine("Total alloc+freed requests", p.alloc_freed, p.alloc_freed_bytes);
  out += PerfLine("Total alloc-only requests", p.alloc_requests - p.alloc_freed, p.alloc_bytes - p.alloc_freed_bytes);
  out += PerfLine("Total free-only requests", p.free_only, p.free_only_bytes);
  out += "\n";
  out += PerfLine("Total allocation failures", p.failures, p.failure_bytes);
  out += "\n";
  absl::StrAppendFormat(&out, "%5s", "Order");
  for (const char* name : kPerfColumnNames) absl::StrAppendFormat(&out, "  %12s", name);
  out += "\n-----";
  for (int m = 0; m < kPerfColumns; ++m) out += "  ------------";
  out += "\n";
  for (int o = 0; o < kNrTraceOrders; ++o) {
    absl::StrAppendFormat(&out, "%5d", o);
    for (int m = 0; m < kPerfColumns; ++m) {
      const uint64_t n = p.order_migratetype[o][m];
      if (n == 0) {
        absl::StrAppendFormat(&out, "  %12s", ".");
      } else {
        absl::StrAppendFormat(&out, "  %12u", n);
      }
    }
    out += "\n";
  }
  out += "(kernel migratetype order; perf kmem labels these columns Unmovable, Reclaimable, Movable,\n"
         " Reserved, CMA/Isolated, with the numbers in the same places)\n";
  return out;
}

std::string FormatReplayText(const ReplayResult& r, const ReplayPlan& plan) {
  const ReplayCounts& c = r.counts;
  std::string out = absl::StrFormat("\nREPLAY \"%s\" on %s\n", r.config_name, r.target);
  out += std::string(out.size() - 2, '=') + "\n";
  absl::StrAppendFormat(&out, "%-30s: %u, per-CPU lists %s%s%s, mobility grouping %s, %s\n", "min_free_kbytes",
                        r.min_free_kbytes, r.pcp_requested ? "on" : "off",
                        r.pcp_requested && !r.pcp_active ? " (requested, but rseq is unusable here)" : "",
                        !r.thread_pages_requested ? ""
                        : r.thread_pages_active   ? " with thread pages"
                                                  : " (thread pages requested, but unusable here)",
                        r.group_by_mobility ? "on" : "off", r.cpu_mapping);
  if (r.mode == "daemon") {
    const DaemonReplayInfo& d = r.daemon;
    absl::StrAppendFormat(&out, "%-30s: %s, lease %u%s, %s\n", "Daemon", d.address, d.lease_id,
                          d.lease_kept ? " (kept)" : " (revoked at the end)",
                          d.pace > 0 ? absl::StrFormat("at %gx the trace's pace (slept %.3f s)", d.pace, d.slept_seconds)
                                     : std::string("at full speed"));
    absl::StrAppendFormat(&out,
                          "%-30s: %u AllocPagesBulk (%u pages, %u filled short), %u AllocPages, %u FreePagesBulk; "
                          "%u known refusals repeated without a call\n",
                          "Calls", d.alloc_bulk_calls, d.bulk_pages, d.bulk_short, d.alloc_calls, d.free_bulk_calls,
                          d.refusals_without_call);
    absl::StrAppendFormat(&out, "%-30s: %u pages by this replay's book, %u by the daemon (GetLease)\n",
                          "Lease holds at the end", d.pages_allocated_at_end, d.lease_pages_at_end);
  }
  absl::StrAppendFormat(&out, "%-30s: %u granted, %u refused\n", "Allocations", c.allocs, c.alloc_failures);
  std::vector<std::string> reasons;
  for (const auto& [reason, n] : c.failures_by_reason) reasons.push_back(absl::StrCat(reason, " ", n));
  if (!reasons.empty()) absl::StrAppendFormat(&out, "%-30s: %s\n", "Refused, by reason", absl::StrJoin(reasons, ", "));
  absl::StrAppendFormat(&out, "%-30s: %u replayed, %u skipped (their allocation was refused)\n", "Frees", c.frees,
                        c.free_of_refused);
  if (c.free_errors) absl::StrAppendFormat(&out, "%-30s: %u (first: %s)\n", "Frees refused", c.free_errors, c.first_free_error);
  absl::StrAppendFormat(&out, "%-30s: %u\n", "Blocks allocated at the end", r.blocks_allocated_at_end);
  const MigrateFallbacks& m = r.migrate;
  absl::StrAppendFormat(&out, "%-30s: %u (%u claimed the pageblock, %u stole one block)", "Migratetype fallbacks",
                        m.fallbacks(), m.total_claims(), m.total_steals());
  if (m.fallbacks() > 0) {
    std::vector<std::string> parts;
    for (int t = 0; t < kNrPcpMigratetypes; ++t) {
      if (m.claims[t] + m.steals[t] > 0) parts.push_back(absl::StrCat(kPcpTypeNames[t], " ", m.claims[t], "+", m.steals[t]));
    }
    absl::StrAppendFormat(&out, "; by requested type, claims+steals: %s", absl::StrJoin(parts, ", "));
  }
  out += "\n";

  out += "\nOrder        allocs     refused       frees\n";
  for (int o = 0; o < kNrTraceOrders; ++o) {
    if (c.allocs_by_order[o] + c.frees_by_order[o] == 0) continue;
    absl::StrAppendFormat(&out, "%5d  %12u%12u%12u\n", o, c.allocs_by_order[o], c.failures_by_order[o], c.frees_by_order[o]);
  }
  out += "\nGFP class          allocs     refused\n";
  for (int g = 0; g < kNrGfpClasses; ++g) {
    if (c.allocs_by_gfp_class[g] == 0) continue;
    absl::StrAppendFormat(&out, "%-14s%12u%12u\n", Absl(kGfpClassNames[g]), c.allocs_by_gfp_class[g], c.failures_by_gfp_class[g]);
  }
  out += "\nMigratetype        allocs     refused   (as traced)\n";
  for (int m = 0; m < kNrTraceMigratetypes; ++m) {
    if (c.allocs_by_migratetype[m] == 0) continue;
    absl::StrAppendFormat(&out, "%-14s%12u%12u\n", kMigratetypeNames[m], c.allocs_by_migratetype[m], c.failures_by_migratetype[m]);
  }
  if (!r.samples.empty()) {
    const size_t zi = MainZone(r);
    absl::StrAppendFormat(&out, "\nFragmentation index over the replay, zone %s (extfrag_index; -1 = a free block "
                          "of that order exists)\n", r.samples.back().zones.empty() ? "?" : r.samples.back().zones[zi].name);
    absl::StrAppendFormat(&out, "%9s %10s %10s %9s", "trace s", "ops", "free pgs", "fallbacks");
    const size_t orders = r.samples.back().zones.empty() ? 0 : r.samples.back().zones[zi].fragmentation_index.size();
    for (size_t o = 0; o < orders; ++o) absl::StrAppendFormat(&out, " %6s", absl::StrCat("o", o));
    out += "\n";
    for (const FragmentationSample& s : r.samples) {
      if (zi >= s.zones.size()) continue;
      absl::StrAppendFormat(&out, "%9.3f %10u %10u %9u", s.trace_seconds, s.ops_done, s.zones[zi].free_pages,
                            s.migrate.fallbacks());
      for (int v : s.zones[zi].fragmentation_index) absl::StrAppendFormat(&out, " %6s", Index(v));
      out += "\n";
    }
  }
  out += "\nFinal /proc/buddyinfo\n" + r.final_buddyinfo;
  if (!r.final_pagetypeinfo.empty()) out += "\nFinal /proc/pagetypeinfo\n" + r.final_pagetypeinfo;
  const double trace_rate = plan.trace_seconds > 0 ? plan.ops.size() / plan.trace_seconds : 0;
  absl::StrAppendFormat(&out, "\n%-30s: %.3f s, %.2f M ops/s", "Replay time", r.wall_seconds, r.ops_per_second / 1e6);
  if (trace_rate > 0) absl::StrAppendFormat(&out, " (%.0fx the trace's own rate)", r.ops_per_second / trace_rate);
  out += "\n";
  return out;
}

std::string FormatCompareText(const std::vector<ReplayResult>& results) {
  struct Row {
    std::string label;
    std::vector<std::string> cells;
  };
  std::vector<Row> rows;
  auto add = [&](std::string label, auto cell) {
    Row row{std::move(label), {}};
    for (const ReplayResult& r : results) row.cells.push_back(cell(r));
    rows.push_back(std::move(row));
  };
  add("target", [](const ReplayResult& r) { return r.target; });
  add("min_free_kbytes", [](const ReplayResult& r) { return absl::StrCat(r.min_free_kbytes); });
  add("per-CPU lists", [](const ReplayResult& r) {
    return std::string(r.pcp_active ? "on" : r.pcp_requested ? "on (inactive)" : "off");
  });
  add("thread pages", [](const ReplayResult& r) {
    return std::string(r.thread_pages_active ? "on" : r.thread_pages_requested ? "on (inactive)" : "off");
  });
  add("mobility grouping", [](const ReplayResult& r) { return std::string(r.group_by_mobility ? "on" : "off"); });
  add("replayed", [](const ReplayResult& r) {
    return r.mode == "daemon" ? std::string("physmemd") : std::string("in-process");
  });
  add("threads", [](const ReplayResult& r) { return absl::StrCat(r.threads); });
  add("allocations granted", [](const ReplayResult& r) { return absl::StrCat(r.counts.allocs); });
  add("allocations refused", [](const ReplayResult& r) { return absl::StrCat(r.counts.alloc_failures); });
  std::vector<std::string> reasons;
  for (const ReplayResult& r : results) {
    for (const auto& [reason, n] : r.counts.failures_by_reason) {
      if (std::find(reasons.begin(), reasons.end(), reason) == reasons.end()) reasons.push_back(reason);
    }
  }
  for (const std::string& reason : reasons) {
    add(absl::StrCat("  ", reason), [&](const ReplayResult& r) {
      auto it = r.counts.failures_by_reason.find(reason);
      return absl::StrCat(it == r.counts.failures_by_reason.end() ? 0 : it->second);
    });
  }
  for (int o = 1; o < kNrTraceOrders; ++o) {
    bool any = false;
    for (const ReplayResult& r : results) any |= r.counts.allocs_by_order[o] > 0;
    if (!any) continue;
    add(absl::StrCat("refused at order ", o), [o](const ReplayResult& r) {
      return absl::StrCat(r.counts.failures_by_order[o], "/", r.counts.allocs_by_order[o]);
    });
  }
  add("frees replayed", [](const ReplayResult& r) { return absl::StrCat(r.counts.frees); });
  add("migratetype fallbacks", [](const ReplayResult& r) { return absl::StrCat(r.migrate.fallbacks()); });
  add("  claims (pageblock)", [](const ReplayResult& r) { return absl::StrCat(r.migrate.total_claims()); });
  add("  steals (one block)", [](const ReplayResult& r) { return absl::StrCat(r.migrate.total_steals()); });
  add("free pages at end", [](const ReplayResult& r) {
    uint64_t n = 0;
    if (!r.samples.empty()) {
      for (const auto& z : r.samples.back().zones) n += z.free_pages;
    }
    return absl::StrCat(n);
  });
  for (unsigned o : {3u, 9u}) {
    add(absl::StrCat("final frag. index o", o, " (main zone)"), [o](const ReplayResult& r) {
      if (r.samples.empty() || r.samples.back().zones.empty()) return std::string("-");
      const auto& z = r.samples.back().zones[MainZone(r)];
      return o < z.fragmentation_index.size() ? Index(z.fragmentation_index[o]) : std::string("-");
    });
  }
  add("replay M ops/s", [](const ReplayResult& r) { return absl::StrFormat("%.2f", r.ops_per_second / 1e6); });

  size_t label_width = 0;
  for (const Row& row : rows) label_width = std::max(label_width, row.label.size());
  std::vector<size_t> widths;
  for (const ReplayResult& r : results) widths.push_back(std::max<size_t>(r.config_name.size(), 8));
  for (const Row& row : rows) {
    for (size_t i = 0; i < row.cells.size(); ++i) widths[i] = std::max(widths[i], row.cells[i].size());
  }
  std::string out = "\nCOMPARE\n=======\n";
  absl::StrAppendFormat(&out, "%-*s", label_width, "");
  for (size_t i = 0; i < results.size(); ++i) absl::StrAppendFormat(&out, "  %*s", widths[i], results[i].config_name);
  out += "\n";
  for (const Row& row : rows) {
    absl::StrAppendFormat(&out, "%-*s", label_width, row.label);
    for (size_t i = 0; i < row.cells.size(); ++i) absl::StrAppendFormat(&out, "  %*s", widths[i], row.cells[i]);
    out += "\n";
  }
  return out;
}

std::string FormatReportJson(const TraceReadStats& s, const ReplayPlan& plan, const std::vector<ReplayResult>& results) {
  std::vector<std::string_view> event_names(kPageEventNames.begin(), kPageEventNames.end());
  std::vector<std::string> errors;
  for (const LineError& e : s.first_errors) errors.push_back(absl::StrCat("{\"line\":", e.line, ",\"reason\":", Quote(e.reason), "}"));
  std::vector<std::string> unknown;
  for (const auto& [name, n] : s.unknown_event_names) unknown.push_back(absl::StrCat(Quote(name), ":", n));
  uint64_t allocs = 0, frees = 0;
  for (const ReplayOp& op : plan.ops) (op.kind == ReplayOpKind::kAlloc ? allocs : frees)++;
  const PerfKmemSummary& p = plan.perf;
  std::vector<std::string> table;
  for (const auto& row : p.order_migratetype) table.push_back(JsonArray(row));
  std::vector<std::string> replays;
  for (const ReplayResult& r : results) replays.push_back(JsonReplay(r));
  return absl::StrCat(
      "{\"trace\":{\"lines\":", s.lines, ",\"bytes\":", s.bytes, ",\"events\":", JsonCountsByName(event_names, s.events),
      ",\"unknown_events\":", s.unknown_events, ",\"unknown_event_names\":{", absl::StrJoin(unknown, ","), "}",
      ",\"callchain_lines\":", s.callchain_lines, ",\"malformed_lines\":", s.malformed_lines,
      ",\"first_errors\":[", absl::StrJoin(errors, ","), "]", ",\"lost_events\":", s.lost_events,
      absl::StrFormat(",\"seconds\":%.6f", s.duration_seconds()), ",\"cpus\":", plan.nr_cpus,
      ",\"replayable_allocs\":", allocs, ",\"replayable_frees\":", frees,
      ",\"skipped\":{\"failed_allocs\":", plan.failed_allocs, ",\"free_only\":", plan.free_only,
      ",\"free_order_mismatch\":", plan.free_order_mismatch, ",\"realloc_of_live_pfn\":", plan.realloc_of_live_pfn,
      ",\"free_batched\":", plan.free_batched, ",\"reference_events\":", plan.reference_events,
      "},\"live_at_end\":", plan.live_at_end, "}",
      ",\"perf_kmem\":{\"alloc_requests\":", p.alloc_requests, ",\"alloc_bytes\":", p.alloc_bytes,
      ",\"free_requests\":", p.free_requests, ",\"free_bytes\":", p.free_bytes, ",\"alloc_freed\":", p.alloc_freed,
      ",\"alloc_freed_bytes\":", p.alloc_freed_bytes, ",\"free_only\":", p.free_only,
      ",\"free_only_bytes\":", p.free_only_bytes, ",\"failures\":", p.failures, ",\"failure_bytes\":", p.failure_bytes,
      ",\"order_migratetype\":[", absl::StrJoin(table, ","), "]}",
      ",\"replays\":[", absl::StrJoin(replays, ","), "]}\n");
}

}  // namespace physmem::trace
