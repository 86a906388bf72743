#include "trace/trace_line.h"

#include <charconv>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace physmem::trace {
namespace {

// See allocator/gfp.cc: Debian's Abseil has its own string_view.
absl::string_view Absl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// 2^52 pages of 4 KiB = 2^64 bytes: no physical page has a larger pfn.
constexpr uint64_t kPfnLimit = uint64_t{1} << 52;
constexpr int kMaxMigratetype = 5;  // MIGRATE_ISOLATE with CMA; MIGRATE_TYPES <= 6

bool IsBlank(char c) { return c == ' ' || c == '\t'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

std::string_view StripLeading(std::string_view s) {
  while (!s.empty() && IsBlank(s.front())) s.remove_prefix(1);
  return s;
}

// A control byte (other than tab) or DEL anywhere means binary junk, not text.
std::optional<size_t> FindControlByte(std::string_view line) {
  for (size_t i = 0; i < line.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(line[i]);
    if ((c < 0x20 && c != '\t') || c == 0x7f) return i;
  }
  return std::nullopt;
}

template <typename T>
bool ParseUnsigned(std::string_view text, int base, T* out) {
  if (text.empty()) return false;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *out, base);
  return ec == std::errc() && end == text.data() + text.size();
}

bool ParseHex(std::string_view text, uint64_t* out) {
  if (text.starts_with("0x") || text.starts_with("0X")) text.remove_prefix(2);
  return ParseUnsigned(text, 16, out);
}

bool ParseInt(std::string_view text, int64_t* out) {
  if (text.empty()) return false;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *out, 10);
  return ec == std::errc() && end == text.data() + text.size();
}

// "2146.068886" (seconds.microseconds; perf --ns prints nine digits) or a raw counter "123456".
bool ParseTimestamp(std::string_view text, uint64_t* ns) {
  const size_t dot = text.find('.');
  uint64_t seconds = 0;
  if (!ParseUnsigned(text.substr(0, dot), 10, &seconds) || seconds > 18'000'000'000ull) return false;
  uint64_t fraction = 0;
  if (dot != std::string_view::npos) {
    std::string_view digits = text.substr(dot + 1);
    if (digits.empty() || digits.size() > 9 || !ParseUnsigned(digits, 10, &fraction)) return false;
    for (size_t i = digits.size(); i < 9; ++i) fraction *= 10;
  }
  *ns = seconds * 1'000'000'000ull + fraction;
  return true;
}

std::optional<PageEventType> EventType(std::string_view name) {
  for (int i = 0; i < kNrPageEventTypes; ++i) {
    if (kPageEventNames[i] == name) return static_cast<PageEventType>(i);
  }
  return std::nullopt;
}

// "CPU:1 [LOST 123 EVENTS]" (ring_buffer_iter / trace_pipe's lost-events notice).
bool ParseLost(std::string_view line, uint64_t* lost) {
  if (!line.starts_with("CPU:")) return false;
  const size_t open = line.find(" [LOST ");
  if (open == std::string_view::npos || !line.ends_with(" EVENTS]")) return false;
  const std::string_view count = line.substr(open + 7, line.size() - open - 7 - 8);
  return ParseUnsigned(count, 10, lost);
}

// The fields of one event's text: "key=value" words. Each key known to some page event may
// appear once; unknown keys are refused (a kernel that changed the format should be noticed).
struct Fields {
  std::optional<std::string_view> page, pfn, order, migratetype, gfp_flags, alloc_order,
      alloc_migratetype;
  int other_known = 0;  // extfrag's and zone_locked's extra fields, checked for shape only
};

std::string ParseFields(std::string_view text, Fields* f) {
  while (true) {
    text = StripLeading(text);
    if (text.empty()) return "";
    const size_t end = text.find_first_of(" \t");
    const std::string_view word = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view() : text.substr(end);
    const size_t eq = word.find('=');
    if (eq == std::string_view::npos || eq == 0) {
      return absl::StrCat("expected key=value, got \"", Excerpt(word), "\"");
    }
    const std::string_view key = word.substr(0, eq);
    const std::string_view value = word.substr(eq + 1);
    std::optional<std::string_view>* slot = nullptr;
    if (key == "page") slot = &f->page;
    else if (key == "pfn") slot = &f->pfn;
    else if (key == "order") slot = &f->order;
    else if (key == "migratetype") slot = &f->migratetype;
    else if (key == "gfp_flags") slot = &f->gfp_flags;
    else if (key == "alloc_order") slot = &f->alloc_order;
    else if (key == "alloc_migratetype") slot = &f->alloc_migratetype;
    if (slot == nullptr) {
      if (key == "fallback_order" || key == "pageblock_order" || key == "fallback_migratetype" ||
          key == "fragmenting" || key == "change_ownership" || key == "percpu_refill") {
        int64_t ignored;
        if (!ParseInt(value, &ignored)) return absl::StrCat(Absl(key), "=\"", Excerpt(value), "\" is not a number");
        ++f->other_known;
        continue;
      }
      return absl::StrCat("unknown field \"", Excerpt(key), "\"");
    }
    if (slot->has_value()) return absl::StrCat("field \"", Absl(key), "\" appears twice");
    *slot = value;
  }
}

std::string ParseOrder(std::string_view key, std::optional<std::string_view> text, PageEvent* e) {
  if (!text) return absl::StrCat("missing ", Absl(key), "=");
  int64_t order;
  if (!ParseInt(*text, &order)) return absl::StrCat(Absl(key), "=\"", Excerpt(*text), "\" is not a number");
  if (order < 0 || order > static_cast<int64_t>(kMaxTraceOrder)) {
    return absl::StrCat(Absl(key), "=", order, " is outside 0..", kMaxTraceOrder, " (MAX_PAGE_ORDER)");
  }
  e->order = static_cast<uint8_t>(order);
  return "";
}

std::string ParseMigratetype(std::string_view key, std::optional<std::string_view> text, PageEvent* e) {
  if (!text) return absl::StrCat("missing ", Absl(key), "=");
  int64_t mt;
  if (!ParseInt(*text, &mt)) return absl::StrCat(Absl(key), "=\"", Excerpt(*text), "\" is not a number");
  if (mt < 0 || mt > kMaxMigratetype) {
    return absl::StrCat(Absl(key), "=", mt, " is outside 0..", kMaxMigratetype, " (enum migratetype)");
  }
  e->migratetype = static_cast<int8_t>(mt);
  return "";
}

// ftrace prints a failed allocation as page=0000000000000000 pfn=0x0 (the pfn argument is
// "REC->pfn != -1UL ? REC->pfn : 0"); perf prints pfn=0xffffffffffffffff.
bool PageIsNull(std::optional<std::string_view> page) {
  if (!page) return false;
  uint64_t value;
  return *page == "(nil)" || (ParseHex(*page, &value) && value == 0);
}

std::string ParsePfn(const Fields& f, PageEvent* e) {
  if (!f.pfn) return "missing pfn=";
  if (!f.pfn->starts_with("0x")) return absl::StrCat("pfn=\"", Excerpt(*f.pfn), "\" is not 0x-hex");
  uint64_t pfn;
  if (!ParseHex(*f.pfn, &pfn)) return absl::StrCat("pfn=\"", Excerpt(*f.pfn), "\" is not 0x-hex");
  const bool alloc = e->type == PageEventType::kAlloc;
  if (alloc && (pfn == kFailedPfn || (pfn == 0 && PageIsNull(f.page)))) {
    e->pfn = kFailedPfn;
    return "";
  }
  if (pfn >= kPfnLimit) {
    return absl::StrCat("pfn=", Absl(*f.pfn), " is beyond any physical page (2^52)",
                        pfn == kFailedPfn ? "; -1 marks only a failed mm_page_alloc" : "");
  }
  e->pfn = pfn;
  return "";
}

}  // namespace

std::string Excerpt(std::string_view text) {
  constexpr size_t kMax = 40;
  const bool cut = text.size() > kMax;
  std::string out = absl::CHexEscape(Absl(text.substr(0, kMax)));
  if (cut) out += "...";
  return out;
}

absl::StatusOr<gfp_t> TraceLineParser::Gfp(std::string_view text) {
  auto it = gfp_cache_.find(Absl(text));
  if (it != gfp_cache_.end()) return it->second;
  absl::StatusOr<gfp_t> gfp = ParseKernelGfp(text);
  if (!gfp.ok()) {
    // Keep messages short: the parser quotes the whole mask, which can be long.
    // ParseKernelGfp's message quotes the whole mask again: keep its reason, cut to a line.
    std::string reason(gfp.status().message());
    if (const size_t at = reason.find("\": "); at != std::string::npos) reason = reason.substr(at + 3);
    if (reason.size() > 160) reason = absl::StrCat(reason.substr(0, 160), "...");
    gfp = absl::InvalidArgumentError(absl::StrCat("gfp_flags=\"", Excerpt(text), "\": ", reason));
  }
  // Bounded: a hostile file could make every line's mask different.
  if (gfp_cache_.size() < 4096) gfp_cache_.emplace(std::string(text), gfp);
  return gfp;
}

ParsedLine TraceLineParser::Parse(std::string_view line) {
  ParsedLine out;
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (!line.empty() && line.front() == '\t') {
    out.kind = LineKind::kCallchain;
    return out;
  }
  if (std::optional<size_t> bad = FindControlByte(line)) {
    out.error = absl::StrCat("control byte 0x", absl::Hex(static_cast<unsigned char>(line[*bad]), absl::kZeroPad2),
                             " at column ", *bad + 1, " (binary data?)");
    return out;
  }
  const std::string_view stripped = StripLeading(line);
  if (stripped.empty()) {
    out.kind = LineKind::kBlank;
    return out;
  }
  if (stripped.front() == '#') {
    out.kind = LineKind::kComment;
    return out;
  }
  if (ParseLost(stripped, &out.lost)) {
    out.kind = LineKind::kLost;
    return out;
  }

  // The CPU: the first "[digits]" word. The comm before it may hold blanks (ftrace pads it).
  size_t open = line.find('[');
  size_t close = std::string_view::npos;
  while (open != std::string_view::npos) {
    close = line.find(']', open);
    if (close != std::string_view::npos && close > open + 1 && close - open <= 6 &&
        line.substr(open + 1, close - open - 1).find_first_not_of("0123456789") == std::string_view::npos) {
      break;
    }
    open = line.find('[', open + 1);
  }
  if (open == std::string_view::npos) {
    out.error = absl::StrCat("no \"[cpu]\" field: \"", Excerpt(line), "\"");
    return out;
  }
  uint32_t cpu = 0;
  if (!ParseUnsigned(line.substr(open + 1, close - open - 1), 10, &cpu) || cpu > 4095) {
    out.error = absl::StrCat("cpu \"", Excerpt(line.substr(open, close - open + 1)), "\" is not 0..4095");
    return out;
  }
  out.event.cpu = static_cast<uint16_t>(cpu);

  // After the CPU: ftrace's flag characters (irq-info, e.g. "d..3."), then the timestamp and ':'.
  std::string_view rest = StripLeading(line.substr(close + 1));
  size_t word_end = rest.find_first_of(" \t");
  std::string_view word = rest.substr(0, word_end);
  if (!word.empty() && !IsDigit(word.front())) {
    rest = word_end == std::string_view::npos ? std::string_view() : StripLeading(rest.substr(word_end));
    word_end = rest.find_first_of(" \t");
    word = rest.substr(0, word_end);
  }
  if (word.empty() || word.back() != ':' || !ParseTimestamp(word.substr(0, word.size() - 1), &out.event.timestamp_ns)) {
    out.error = absl::StrCat("expected a timestamp like \"2146.068886:\" after the cpu, got \"", Excerpt(word), "\"");
    return out;
  }
  rest = word_end == std::string_view::npos ? std::string_view() : StripLeading(rest.substr(word_end));

  // The event name: "mm_page_alloc:" (ftrace) or "kmem:mm_page_alloc:" (perf).
  word_end = rest.find_first_of(" \t");
  word = rest.substr(0, word_end);
  if (word.size() < 2 || word.back() != ':') {
    out.error = absl::StrCat("expected an event name ending in ':', got \"", Excerpt(word), "\"");
    return out;
  }
  std::string_view name = word.substr(0, word.size() - 1);
  const bool kmem = name.starts_with("kmem:");
  if (kmem) name.remove_prefix(5);
  const std::optional<PageEventType> type = name.find(':') == std::string_view::npos ? EventType(name) : std::nullopt;
  if (!type) {
    out.kind = LineKind::kUnknownEvent;
    out.unknown_name = word.substr(0, word.size() - 1);
    return out;
  }
  out.event.type = *type;
  const std::string_view payload = word_end == std::string_view::npos ? std::string_view() : rest.substr(word_end);

  Fields f;
  std::string error = ParseFields(payload, &f);
  PageEvent& e = out.event;
  if (error.empty()) error = ParsePfn(f, &e);
  if (error.empty()) {
    switch (e.type) {
      case PageEventType::kAlloc:
        error = ParseOrder("order", f.order, &e);
        if (error.empty()) error = ParseMigratetype("migratetype", f.migratetype, &e);
        if (error.empty()) {
          if (!f.gfp_flags) {
            error = "missing gfp_flags=";
          } else if (absl::StatusOr<gfp_t> gfp = Gfp(*f.gfp_flags); gfp.ok()) {
            e.gfp = *gfp;
          } else {
            error = std::string(gfp.status().message());
          }
        }
        break;
      case PageEventType::kFree:
      case PageEventType::kFreeBatched:
        error = ParseOrder("order", f.order, &e);
        break;
      case PageEventType::kPcpDrain:
      case PageEventType::kAllocZoneLocked:
        error = ParseOrder("order", f.order, &e);
        if (error.empty()) error = ParseMigratetype("migratetype", f.migratetype, &e);
        break;
      case PageEventType::kExtfrag:
        error = ParseOrder("alloc_order", f.alloc_order, &e);
        if (error.empty()) error = ParseMigratetype("alloc_migratetype", f.alloc_migratetype, &e);
        break;
    }
  }
  if (!error.empty()) {
    out.error = absl::StrCat(Absl(kPageEventNames[static_cast<int>(e.type)]), ": ", error);
    return out;
  }
  out.kind = LineKind::kEvent;
  return out;
}

}  // namespace physmem::trace
