// The picture of the arena: an ArenaMap (allocator/arena_map.h) laid out as a grid of cells, one
// band per zone, and drawn as PNG (libpng), SVG, or the JSON the daemon's live /arena page draws
// from. Every pageblock is a cell; when there are more than max_cells pageblocks, a cell covers 2,
// 4, ... of them, so a 512 MiB and a 64 GiB machine both give a picture a person can read.
//
// A cell's state and colour:
//   hole       no RAM in the cell (a gap in the memory map inside the zone)              grey
//   free       RAM, all of it free; shaded by the largest free block's order              light..dark green
//   allocated  RAM, none of it free; coloured by migratetype (the pageblock's type,       red, blue, ...
//              the most common one when a cell covers several)
//   mixed      both free and allocated pages                                               amber
//
// Who calls it: physmemctl map (from the GetArenaMap RPC), the daemon's /arena.json
// (server/metrics.cc), the trace replayer's map sequence (trace/), tests. LayoutArenaMap() is the
// one place that decides where everything goes; the PNG, the SVG and the live page all draw
// that layout, so a test can find any cell in any of them from the layout alone.
// Thread-safety: pure functions of their arguments.
#ifndef PHYSMEM_PICTURE_ARENA_MAP_RENDER_H_
#define PHYSMEM_PICTURE_ARENA_MAP_RENDER_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "allocator/arena_map.h"

namespace physmem {

enum class CellState : uint8_t { kHole = 0, kFree, kAllocated, kMixed };
std::string_view CellStateName(CellState s);  // "hole", "free", "allocated", "mixed"

struct ArenaCell {
  uint64_t start_pfn = 0;
  uint64_t span_pages = 0;  // pages of the cell inside the zone's range: RAM plus holes
  uint64_t free_pages = 0;
  uint64_t allocated_pages = 0;
  int max_free_order = -1;  // -1: nothing free
  int migratetype = 0;      // weighted by RAM pages over the cell's entries; lowest on a tie
  CellState state = CellState::kHole;
};

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
  std::string Hex() const;  // "#rrggbb"
  friend bool operator==(const Rgb&, const Rgb&) = default;
};

inline constexpr Rgb kBackgroundColour{255, 255, 255};
inline constexpr Rgb kInkColour{0, 0, 0};
inline constexpr Rgb kFrameColour{96, 96, 96};
inline constexpr Rgb kHoleColour{158, 158, 158};
inline constexpr Rgb kMixedColour{240, 180, 0};
Rgb MigratetypeColour(int migratetype);
Rgb FreeOrderColour(int order, unsigned nr_orders);  // order 0 lightest, nr_orders - 1 darkest
Rgb CellColour(const ArenaCell& cell, unsigned nr_orders);

// The cells of one zone, `entries_per_cell` consecutive entries each.
std::vector<ArenaCell> ZoneCells(const ArenaMap& map, const ArenaMapZone& zone, uint32_t entries_per_cell);

struct RenderOptions {
  uint32_t max_cells = 4096;  // 1..65536; above it a cell covers more pageblocks
  int columns = 64;           // cells a row, 1..1024
  int cell_px = 8;            // 1..64
  int gap_px = 1;             // 0..16, background between cells
  int text_scale = 2;         // 1..4: the 5x7 font at this many pixels a font pixel
};

struct PixelRect {
  int x = 0, y = 0, w = 0, h = 0;
};

// Text is placed by its top-left corner; it is kGlyphHeight * text_scale pixels high.
struct TextItem {
  int x = 0, y = 0;
  std::string text;
};

struct MapLayout {
  struct ZoneBand {
    ZoneType type = ZONE_NORMAL;
    uint64_t first_pfn = 0;  // cell i covers [first_pfn + i * pages_per_cell, + pages_per_cell) ∩ the zone
    uint64_t end_pfn = 0;    // exclusive end of the zone's RAM
    TextItem heading;
    PixelRect frame;     // a 1-pixel border around the zone's cells
    int x0 = 0, y0 = 0;  // top-left of cell 0; cell i is at x0 + (i % columns) * pitch, y0 + (i / columns) * pitch
    std::vector<ArenaCell> cells;
    std::vector<uint64_t> nr_free;  // buddyinfo
    PixelRect CellRect(size_t i, int columns, int pitch, int cell_px) const;
  };
  struct Swatch {
    PixelRect rect;
    Rgb colour;
    TextItem label;
  };
  int width = 0, height = 0;
  int columns = 0, pitch = 0, cell_px = 0, text_scale = 0;
  unsigned nr_orders = 0;
  unsigned page_shift = 12;
  uint32_t pageblocks_per_cell = 1;
  uint64_t pages_per_cell = 0;
  TextItem title;
  std::vector<ZoneBand> zones;
  std::vector<Swatch> legend;

  PixelRect CellRect(size_t zone, size_t i) const { return zones[zone].CellRect(i, columns, pitch, cell_px); }
};

// INVALID_ARGUMENT naming the option when one is out of its range.
absl::StatusOr<MapLayout> LayoutArenaMap(const ArenaMap& map, const RenderOptions& options = {});

// 8-bit RGB pixels, row-major, width * height * 3 bytes: what RenderPng encodes.
std::vector<uint8_t> RasterizeLayout(const MapLayout& layout);
// A PNG file's bytes (libpng's simplified write API). INTERNAL with libpng's message on failure.
absl::StatusOr<std::string> RenderPng(const MapLayout& layout);
// A standalone SVG document; each cell a <rect> with a <title> (pfns, free and allocated pages).
std::string RenderSvg(const MapLayout& layout);
// The layout for the live page (server/arena_page.h): {"width", "height", "columns", "pitch",
// "cell_px", "title", "palette": ["#rrggbb", ...], "legend": [...], "zones": [{"name", "heading",
// "frame", "x0", "y0", "first_pfn", "end_pfn", "cells": [palette index, ...], "nr_free":
// [...]}],
// "buddyinfo": "<the /proc/buddyinfo text of the snapshot>"}.
std::string RenderJson(const MapLayout& layout);

// Writes the file `path` as PNG or SVG by its extension (.png / .svg); INVALID_ARGUMENT for
// another extension, the errno message if the file cannot be written.
absl::Status WriteArenaMapFile(const MapLayout& layout, const std::string& path);

}  // namespace physmem

#endif  // PHYSMEM_PICTURE_ARENA_MAP_RENDER_H_
