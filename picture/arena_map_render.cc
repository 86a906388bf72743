#include "picture/arena_map_render.h"

#include <png.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "allocator/migratetype.h"
#include "allocator/stats.h"
#include "picture/bitmap_font.h"

namespace physmem {
namespace {

constexpr int kMargin = 8;

std::string Bytes(uint64_t pages, unsigned page_shift) {
  const uint64_t bytes = pages << page_shift;
  if (bytes >= (uint64_t{1} << 30) && bytes % (uint64_t{1} << 30) == 0) return absl::StrCat(bytes >> 30, " GiB");
  if (bytes >= (uint64_t{10} << 30)) return absl::StrFormat("%.1f GiB", static_cast<double>(bytes) / (1 << 30));
  if (bytes >= (uint64_t{1} << 20)) return absl::StrCat(bytes >> 20, " MiB");
  return absl::StrCat(bytes >> 10, " KiB");
}

int LineHeight(int scale) { return kGlyphHeight * scale + 6; }

absl::Status CheckRange(std::string_view name, int64_t v, int64_t lo, int64_t hi) {
  if (v >= lo && v <= hi) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat("%s is %d; expected %d..%d", name, v, lo, hi));
}

// Every colour the picture uses, in a fixed order: the live page's palette indices.
std::vector<Rgb> Palette(unsigned nr_orders) {
  std::vector<Rgb> p = {kHoleColour, kMixedColour};
  for (unsigned o = 0; o < nr_orders; ++o) p.push_back(FreeOrderColour(static_cast<int>(o), nr_orders));
  for (int mt = 0; mt < MIGRATE_TYPES; ++mt) p.push_back(MigratetypeColour(mt));
  return p;
}

size_t PaletteIndex(const ArenaCell& c, unsigned nr_orders) {
  switch (c.state) {
    case CellState::kHole:
      return 0;
    case CellState::kMixed:
      return 1;
    case CellState::kFree:
      return 2 + static_cast<size_t>(std::clamp(c.max_free_order, 0, int(nr_orders) - 1));
    case CellState::kAllocated:
      return 2 + nr_orders + static_cast<size_t>(std::clamp(c.migratetype, 0, MIGRATE_TYPES - 1));
  }
  return 0;
}

std::string JsonString(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      absl::StrAppendFormat(&out, "\\u%04x", static_cast<unsigned char>(c));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string XmlEscape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        // XML 1.0 allows no control characters but tab, newline and carriage return.
        if (static_cast<unsigned char>(c) >= 0x20 || c == '\t' || c == '\n' || c == '\r') out += c;
    }
  }
  return out;
}

std::string RectJson(const PixelRect& r) { return absl::StrFormat("[%d,%d,%d,%d]", r.x, r.y, r.w, r.h); }
std::string TextJson(const TextItem& t) {
  return absl::StrFormat("{\"x\":%d,\"y\":%d,\"text\":%s}", t.x, t.y, JsonString(t.text));
}

std::string CellTitle(const MapLayout& l, ZoneType z, const ArenaCell& c) {
  return absl::StrFormat("%s pfn %#x-%#x: %s, %u free, %u allocated pages", zone_name(z), c.start_pfn,
                         c.start_pfn + l.pages_per_cell - 1, CellStateName(c.state), c.free_pages, c.allocated_pages);
}

class Canvas {
 public:
  Canvas(int w, int h) : w_(w), h_(h), px_(size_t(w) * h * 3) { Fill({0, 0, w, h}, kBackgroundColour); }

  void Fill(const PixelRect& r, Rgb c) {
    for (int y = std::max(r.y, 0); y < std::min(r.y + r.h, h_); ++y) {
      for (int x = std::max(r.x, 0); x < std::min(r.x + r.w, w_); ++x) Set(x, y, c);
    }
  }
  void Frame(const PixelRect& r, Rgb c) {
    Fill({r.x, r.y, r.w, 1}, c);
    Fill({r.x, r.y + r.h - 1, r.w, 1}, c);
    Fill({r.x, r.y, 1, r.h}, c);
    Fill({r.x + r.w - 1, r.y, 1, r.h}, c);
  }
  void Text(const TextItem& t, int scale, Rgb c) {
    for (size_t i = 0; i < t.text.size(); ++i) {
      const int gx = t.x + static_cast<int>(i) * kGlyphAdvance * scale;
      for (int y = 0; y < kGlyphHeight; ++y) {
        for (int x = 0; x < kGlyphWidth; ++x) {
          if (GlyphPixel(t.text[i], x, y)) Fill({gx + x * scale, t.y + y * scale, scale, scale}, c);
        }
      }
    }
  }
  std::vector<uint8_t> Take() { return std::move(px_); }

 private:
  void Set(int x, int y, Rgb c) {
    uint8_t* p = &px_[(size_t(y) * w_ + x) * 3];
    p[0] = c.r;
    p[1] = c.g;
    p[2] = c.b;
  }
  int w_, h_;
  std::vector<uint8_t> px_;
};

}  // namespace

std::string_view CellStateName(CellState s) {
  static constexpr std::array<std::string_view, 4> kNames = {"hole", "free", "allocated", "mixed"};
  return kNames[static_cast<int>(s)];
}

std::string Rgb::Hex() const { return absl::StrFormat("#%02x%02x%02x", r, g, b); }

Rgb MigratetypeColour(int mt) {
  // Unmovable red, Movable blue, Reclaimable purple, HighAtomic pink, Isolate cyan.
  static constexpr std::array<Rgb, MIGRATE_TYPES> kColours = {Rgb{214, 39, 40}, Rgb{31, 119, 180}, Rgb{148, 103, 189},
                                                              Rgb{227, 119, 194}, Rgb{23, 190, 207}};
  return kColours[std::clamp(mt, 0, MIGRATE_TYPES - 1)];
}

Rgb FreeOrderColour(int order, unsigned nr_orders) {
  // From a light green (order 0: free, but only in small pieces) to a dark one (the largest order).
  const double t = nr_orders > 1 ? std::clamp(order, 0, int(nr_orders) - 1) / double(nr_orders - 1) : 1.0;
  auto lerp = [t](int a, int b) { return static_cast<uint8_t>(a + (b - a) * t + 0.5); };
  return Rgb{lerp(199, 0), lerp(233, 100), lerp(192, 27)};
}

Rgb CellColour(const ArenaCell& c, unsigned nr_orders) { return Palette(nr_orders)[PaletteIndex(c, nr_orders)]; }

std::vector<ArenaCell> ZoneCells(const ArenaMap& map, const ArenaMapZone& zone, uint32_t entries_per_cell) {
  std::vector<ArenaCell> cells;
  const uint64_t ppe = map.pages_per_entry();
  for (size_t first = 0; first < zone.entries.size(); first += entries_per_cell) {
    ArenaCell c;
    c.start_pfn = std::max(zone.start_pfn, zone.first_pfn + first * ppe);
    std::array<uint64_t, MIGRATE_TYPES> by_type{};
    for (size_t i = first; i < std::min<size_t>(zone.entries.size(), first + entries_per_cell); ++i) {
      const ArenaMapEntry& e = zone.entries[i];
      c.span_pages += zone.entry_span_pages(i, ppe);
      c.free_pages += e.free_pages;
      c.allocated_pages += e.allocated_pages;
      c.max_free_order = std::max<int>(c.max_free_order, e.max_free_order);
      if (e.migratetype < MIGRATE_TYPES) by_type[e.migratetype] += uint64_t{e.free_pages} + e.allocated_pages;
    }
    c.migratetype = static_cast<int>(std::max_element(by_type.begin(), by_type.end()) - by_type.begin());
    if (c.free_pages + c.allocated_pages == 0) {
      c.state = CellState::kHole;
    } else if (c.allocated_pages == 0) {
      c.state = CellState::kFree;
    } else if (c.free_pages == 0) {
      c.state = CellState::kAllocated;
    } else {
      c.state = CellState::kMixed;
    }
    cells.push_back(c);
  }
  return cells;
}

PixelRect MapLayout::ZoneBand::CellRect(size_t i, int columns, int pitch, int cell_px) const {
  return PixelRect{x0 + static_cast<int>(i % columns) * pitch, y0 + static_cast<int>(i / columns) * pitch, cell_px,
                   cell_px};
}

absl::StatusOr<MapLayout> LayoutArenaMap(const ArenaMap& map, const RenderOptions& o) {
  for (absl::Status s : {CheckRange("max_cells", o.max_cells, 1, 65536), CheckRange("columns", o.columns, 1, 1024),
                         CheckRange("cell_px", o.cell_px, 1, 64), CheckRange("gap_px", o.gap_px, 0, 16),
                         CheckRange("text_scale", o.text_scale, 1, 4)}) {
    if (!s.ok()) return s;
  }
  MapLayout l;
  l.columns = o.columns;
  l.pitch = o.cell_px + o.gap_px;
  l.cell_px = o.cell_px;
  l.text_scale = o.text_scale;
  l.nr_orders = map.nr_orders;
  l.page_shift = map.page_shift;
  size_t entries = 0;
  for (const ArenaMapZone& z : map.zones) entries += z.entries.size();
  uint32_t per_cell = 1;
  while (per_cell < (1u << 30) && (entries + per_cell - 1) / per_cell > o.max_cells) per_cell *= 2;
  l.pageblocks_per_cell = map.pageblocks_per_entry * per_cell;
  l.pages_per_cell = map.pages_per_entry() * per_cell;

  const int line = LineHeight(o.text_scale);
  const int grid_w = 2 + o.gap_px + o.columns * l.pitch;
  uint64_t ram_pages = 0;
  for (const ArenaMapZone& z : map.zones) {
    for (const ArenaMapEntry& e : z.entries) ram_pages += uint64_t{e.free_pages} + e.allocated_pages;
  }
  l.title = {
      kMargin, kMargin,
      absl::StrFormat("physmemd arena: %s, %s, pageblock %s, cell = %u pageblock%s", map.target_name,
                      Bytes(ram_pages, map.page_shift), Bytes(uint64_t{1} << map.pageblock_order, map.page_shift),
                      l.pageblocks_per_cell, l.pageblocks_per_cell == 1 ? "" : "s")};
  int y = kMargin + line + 4;
  int width = std::max(grid_w, TextWidth(l.title.text, o.text_scale));
  for (const ArenaMapZone& z : map.zones) {
    MapLayout::ZoneBand band;
    band.type = z.type;
    band.first_pfn = z.first_pfn;
    band.end_pfn = z.end_pfn;
    band.cells = ZoneCells(map, z, per_cell);
    band.nr_free = z.nr_free;
    uint64_t zone_ram = 0;
    for (const ArenaCell& c : band.cells) zone_ram += c.free_pages + c.allocated_pages;
    band.heading = {kMargin, y,
                    absl::StrFormat("%s  pfn %#x-%#x  %s RAM", zone_name(z.type), z.start_pfn, z.end_pfn - 1,
                                    Bytes(zone_ram, map.page_shift))};
    width = std::max(width, TextWidth(band.heading.text, o.text_scale));
    y += line;
    const int rows = static_cast<int>((band.cells.size() + o.columns - 1) / o.columns);
    band.frame = {kMargin, y, grid_w, 2 + o.gap_px + rows * l.pitch};
    band.x0 = kMargin + 1 + o.gap_px;
    band.y0 = y + 1 + o.gap_px;
    y += band.frame.h + 10;
    l.zones.push_back(std::move(band));
  }
  l.width = width + 2 * kMargin;

  // The legend, flowing in rows.
  std::vector<std::pair<std::string, Rgb>> items = {{"hole", kHoleColour}, {"mixed", kMixedColour}};
  for (unsigned ord = 0; ord < map.nr_orders; ++ord) {
    items.push_back({absl::StrCat("free o", ord), FreeOrderColour(static_cast<int>(ord), map.nr_orders)});
  }
  for (int mt = 0; mt < MIGRATE_TYPES; ++mt)
    items.push_back({std::string(kMigratetypeNames[mt]), MigratetypeColour(mt)});
  const int sw = kGlyphHeight * o.text_scale;
  int x = kMargin;
  for (auto& [label, colour] : items) {
    const int item_w = sw + 4 + TextWidth(label, o.text_scale) + 12;
    if (x != kMargin && x + item_w > l.width - kMargin) {
      x = kMargin;
      y += line;
    }
    l.legend.push_back({{x, y, sw, sw}, colour, {x + sw + 4, y, label}});
    x += item_w;
  }
  l.height = y + line + kMargin;
  return l;
}

std::vector<uint8_t> RasterizeLayout(const MapLayout& l) {
  Canvas c(l.width, l.height);
  c.Text(l.title, l.text_scale, kInkColour);
  for (size_t z = 0; z < l.zones.size(); ++z) {
    const MapLayout::ZoneBand& band = l.zones[z];
    c.Text(band.heading, l.text_scale, kInkColour);
    c.Frame(band.frame, kFrameColour);
    for (size_t i = 0; i < band.cells.size(); ++i) c.Fill(l.CellRect(z, i), CellColour(band.cells[i], l.nr_orders));
  }
  for (const MapLayout::Swatch& s : l.legend) {
    c.Fill(s.rect, s.colour);
    c.Text(s.label, l.text_scale, kInkColour);
  }
  return c.Take();
}

absl::StatusOr<std::string> RenderPng(const MapLayout& l) {
  const std::vector<uint8_t> pixels = RasterizeLayout(l);
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(l.width);
  image.height = static_cast<png_uint_32>(l.height);
  image.format = PNG_FORMAT_RGB;
  png_alloc_size_t size = 0;
  // The first call measures, the second writes (libpng's PNG_IMAGE_WRITE_TO_MEMORY idiom).
  if (!png_image_write_to_memory(&image, nullptr, &size, 0, pixels.data(), 0, nullptr)) {
    const std::string msg = image.message;
    png_image_free(&image);
    return absl::InternalError(absl::StrCat("libpng could not encode the map: ", msg));
  }
  std::string out(size, '\0');
  if (!png_image_write_to_memory(&image, out.data(), &size, 0, pixels.data(), 0, nullptr)) {
    const std::string msg = image.message;
    png_image_free(&image);
    return absl::InternalError(absl::StrCat("libpng could not encode the map: ", msg));
  }
  out.resize(size);
  return out;
}

std::string RenderSvg(const MapLayout& l) {
  const int font_px = kGlyphHeight * l.text_scale;
  auto text = [&](const TextItem& t) {
    // SVG places text by its baseline: the glyph box's bottom.
    return absl::StrFormat("<text x=\"%d\" y=\"%d\" font-family=\"monospace\" font-size=\"%d\">%s</text>\n", t.x,
                           t.y + font_px, font_px + 2, XmlEscape(t.text));
  };
  std::string s = absl::StrFormat(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\">\n"
      "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"%s\"/>\n",
      l.width, l.height, l.width, l.height, l.width, l.height, kBackgroundColour.Hex());
  s += text(l.title);
  for (size_t z = 0; z < l.zones.size(); ++z) {
    const MapLayout::ZoneBand& band = l.zones[z];
    absl::StrAppend(&s, "<g class=\"zone\" id=\"zone-", std::string(zone_name(band.type)), "\">\n", text(band.heading));
    const PixelRect& f = band.frame;
    absl::StrAppendFormat(&s, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"%s\"/>\n",
                          f.x + 0.5, f.y + 0.5, f.w - 1, f.h - 1, kFrameColour.Hex());
    for (size_t i = 0; i < band.cells.size(); ++i) {
      const PixelRect r = l.CellRect(z, i);
      absl::StrAppendFormat(
          &s, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"><title>%s</title></rect>\n", r.x, r.y,
          r.w, r.h, CellColour(band.cells[i], l.nr_orders).Hex(), XmlEscape(CellTitle(l, band.type, band.cells[i])));
    }
    s += "</g>\n";
  }
  s += "<g class=\"legend\">\n";
  for (const MapLayout::Swatch& sw : l.legend) {
    absl::StrAppendFormat(&s, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"/>\n", sw.rect.x,
                          sw.rect.y, sw.rect.w, sw.rect.h, sw.colour.Hex());
    s += text(sw.label);
  }
  s += "</g>\n</svg>\n";
  return s;
}

std::string RenderJson(const MapLayout& l) {
  std::vector<std::string> palette;
  for (const Rgb& c : Palette(l.nr_orders)) palette.push_back(JsonString(c.Hex()));
  std::vector<std::string> legend;
  for (const MapLayout::Swatch& s : l.legend) {
    legend.push_back(absl::StrFormat("{\"rect\":%s,\"colour\":%s,\"label\":%s}", RectJson(s.rect),
                                     JsonString(s.colour.Hex()), TextJson(s.label)));
  }
  std::vector<std::string> zones;
  std::string buddyinfo;
  for (const MapLayout::ZoneBand& band : l.zones) {
    std::vector<size_t> cells;
    for (const ArenaCell& c : band.cells) cells.push_back(PaletteIndex(c, l.nr_orders));
    zones.push_back(absl::StrFormat(
        "{\"name\":%s,\"heading\":%s,\"frame\":%s,\"x0\":%d,\"y0\":%d,\"first_pfn\":%u,\"end_pfn\":%u,"
        "\"cells\":[%s],\"nr_free\":[%s]}",
        JsonString(zone_name(band.type)), TextJson(band.heading), RectJson(band.frame), band.x0, band.y0,
        band.first_pfn, band.end_pfn, absl::StrJoin(cells, ","), absl::StrJoin(band.nr_free, ",")));
    ZoneStats zs;
    zs.type = band.type;
    zs.nr_free = band.nr_free;
    absl::StrAppend(&buddyinfo, FormatBuddyinfoLine(zs), "\n");
  }
  return absl::StrFormat(
      "{\"width\":%d,\"height\":%d,\"columns\":%d,\"pitch\":%d,\"cell_px\":%d,\"text_scale\":%d,"
      "\"pageblocks_per_cell\":%u,\"pages_per_cell\":%u,\"title\":%s,\"palette\":[%s],\"legend\":[%s],"
      "\"zones\":[%s],\"buddyinfo\":%s}",
      l.width, l.height, l.columns, l.pitch, l.cell_px, l.text_scale, l.pageblocks_per_cell, l.pages_per_cell,
      TextJson(l.title), absl::StrJoin(palette, ","), absl::StrJoin(legend, ","), absl::StrJoin(zones, ","),
      JsonString(buddyinfo));
}

absl::Status WriteArenaMapFile(const MapLayout& layout, const std::string& path) {
  std::string bytes;
  if (absl::EndsWithIgnoreCase(path, ".png")) {
    absl::StatusOr<std::string> png = RenderPng(layout);
    if (!png.ok()) return png.status();
    bytes = std::move(*png);
  } else if (absl::EndsWithIgnoreCase(path, ".svg")) {
    bytes = RenderSvg(layout);
  } else {
    return absl::InvalidArgumentError(
        absl::StrFormat("cannot tell the picture's format from '%s': name it .png or .svg", absl::CHexEscape(path)));
  }
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return absl::ErrnoToStatus(errno, absl::StrCat("cannot write ", path));
  const bool wrote = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  const int write_errno = errno;
  if (std::fclose(f) != 0 || !wrote)
    return absl::ErrnoToStatus(wrote ? errno : write_errno, absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace physmem
