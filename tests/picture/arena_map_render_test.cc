// Tests of picture/arena_map_render.h (layout, colours, PNG, SVG, JSON), picture/bitmap_font.h and
// picture/arena_map_proto.h, on allocators in known states at 512 MiB and at 64 GiB.
#include "picture/arena_map_render.h"

#include <png.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "allocator/arena_map.h"
#include "allocator/migratetype.h"
#include "allocator/page_allocator.h"
#include "gmock/gmock.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "picture/arena_map_proto.h"
#include "picture/bitmap_font.h"
#include "tests/allocator/test_targets.h"

namespace physmem {
namespace {

using testing::GiB;
using ::testing::HasSubstr;
using testing::MiB;

std::unique_ptr<PageAllocator> MakeX86(uint64_t bytes) {
  absl::StatusOr<Target> t = BuiltinTarget("x86_64", bytes);
  EXPECT_TRUE(t.ok()) << t.status();
  PageAllocatorOptions o = testing::SmallOptions(*t);
  o.nr_cpus = 2;
  absl::StatusOr<std::unique_ptr<PageAllocator>> pa = PageAllocator::Create(std::move(o));
  EXPECT_TRUE(pa.ok()) << pa.status();
  return std::move(*pa);
}

// The cell (zone index, cell index) of the layout that holds pfn.
std::pair<size_t, size_t> CellOf(const MapLayout& l, uint64_t pfn) {
  for (size_t z = 0; z < l.zones.size(); ++z) {
    const std::vector<ArenaCell>& cells = l.zones[z].cells;
    for (size_t i = 0; i < cells.size(); ++i) {
      if (pfn >= cells[i].start_pfn && pfn < cells[i].start_pfn + cells[i].span_pages) return {z, i};
    }
  }
  ADD_FAILURE() << "no cell holds pfn " << pfn;
  return {0, 0};
}

Rgb PixelAt(const std::vector<uint8_t>& px, const MapLayout& l, int x, int y) {
  const uint8_t* p = &px[(size_t(y) * l.width + x) * 3];
  return Rgb{p[0], p[1], p[2]};
}

Rgb CentreOf(const std::vector<uint8_t>& px, const MapLayout& l, const PixelRect& r) {
  return PixelAt(px, l, r.x + r.w / 2, r.y + r.h / 2);
}

// The known state: one GFP_KERNEL pageblock (allocated, its pageblock's type), one movable page in a
// pageblock otherwise free (mixed), everything else free in maximal blocks.
struct KnownState {
  std::unique_ptr<PageAllocator> pa;
  uint64_t full_pfn = 0, mixed_pfn = 0;
  int full_mt = 0;
};

KnownState Known(uint64_t bytes) {
  KnownState k;
  k.pa = MakeX86(bytes);
  Page* full = k.pa->alloc_pages(GFP_KERNEL, k.pa->pageblock_order());
  Page* one = k.pa->alloc_pages(GFP_HIGHUSER_MOVABLE, 0);
  EXPECT_NE(full, nullptr);
  EXPECT_NE(one, nullptr);
  k.full_pfn = k.pa->page_to_pfn(full);
  k.full_mt = k.pa->pageblock_migratetype(full);
  k.mixed_pfn = k.pa->page_to_pfn(one);
  return k;
}

TEST(ArenaMapRender, EveryPageblockIsACellAt512MiBColouredByItsState) {
  KnownState k = Known(512 * MiB);
  const ArenaMap map = TakeArenaMap(*k.pa);
  absl::StatusOr<MapLayout> l = LayoutArenaMap(map);
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->pageblocks_per_cell, 1u);
  size_t cells = 0, entries = 0;
  for (const auto& band : l->zones) cells += band.cells.size();
  for (const auto& z : map.zones) entries += z.entries.size();
  EXPECT_EQ(cells, entries);
  ASSERT_EQ(l->zones.size(), 3u);  // DMA, DMA32, Normal

  const std::vector<uint8_t> px = RasterizeLayout(*l);
  auto [fz, fi] = CellOf(*l, k.full_pfn);
  EXPECT_EQ(l->zones[fz].cells[fi].state, CellState::kAllocated);
  EXPECT_EQ(CentreOf(px, *l, l->CellRect(fz, fi)), MigratetypeColour(k.full_mt));
  auto [mz, mi] = CellOf(*l, k.mixed_pfn);
  EXPECT_EQ(l->zones[mz].cells[mi].state, CellState::kMixed);
  EXPECT_EQ(CentreOf(px, *l, l->CellRect(mz, mi)), kMixedColour);
  // The middle Normal cell is untouched RAM in order-10 blocks (small requests are served from the
  // zone's unaligned tail, where the smallest blocks are): the darkest green.
  const size_t middle = l->zones.back().cells.size() / 2;
  EXPECT_EQ(l->zones.back().cells[middle].state, CellState::kFree);
  EXPECT_EQ(l->zones.back().cells[middle].max_free_order, 10);
  EXPECT_EQ(CentreOf(px, *l, l->CellRect(l->zones.size() - 1, middle)), FreeOrderColour(10, 11));
  // Every cell of every zone is drawn in its own colour.
  for (size_t z = 0; z < l->zones.size(); ++z) {
    for (size_t i = 0; i < l->zones[z].cells.size(); ++i) {
      ASSERT_EQ(CentreOf(px, *l, l->CellRect(z, i)), CellColour(l->zones[z].cells[i], l->nr_orders))
          << zone_name(l->zones[z].type) << " cell " << i;
    }
  }
}

TEST(ArenaMapRender, At64GiBCellsAggregatePageblocksAndKeepTheirState) {
  KnownState k = Known(64 * GiB);
  const ArenaMap map = TakeArenaMap(*k.pa);
  absl::StatusOr<MapLayout> l = LayoutArenaMap(map);
  ASSERT_TRUE(l.ok()) << l.status();
  size_t cells = 0;
  for (const auto& band : l->zones) cells += band.cells.size();
  EXPECT_LE(cells, 4096u);
  EXPECT_GT(l->pageblocks_per_cell, 1u);
  EXPECT_LT(l->height, 1200);  // readable on a screen
  const std::vector<uint8_t> px = RasterizeLayout(*l);
  // The GFP_KERNEL pageblock and the movable page share a cell with free pageblocks now: mixed.
  auto [fz, fi] = CellOf(*l, k.full_pfn);
  EXPECT_EQ(l->zones[fz].cells[fi].state, CellState::kMixed);
  EXPECT_EQ(l->zones[fz].cells[fi].allocated_pages, uint64_t{1} << k.pa->pageblock_order());
  EXPECT_EQ(CentreOf(px, *l, l->CellRect(fz, fi)), kMixedColour);
  const size_t middle = l->zones.back().cells.size() / 2;
  EXPECT_EQ(l->zones.back().cells[middle].state, CellState::kFree);
  EXPECT_EQ(CentreOf(px, *l, l->CellRect(l->zones.size() - 1, middle)), FreeOrderColour(10, 11));
}

TEST(ArenaMapRender, AHoleInsideAZoneIsAGreyCell) {
  Target t = testing::SmallX86();
  t.ram = {{0, 640 * testing::KiB}, {1 * MiB, 2560 * testing::KiB}, {4 * MiB, 4 * MiB}, {10 * MiB, 6 * MiB}};
  absl::StatusOr<std::unique_ptr<PageAllocator>> pa = PageAllocator::Create(testing::SmallOptions(t));
  ASSERT_TRUE(pa.ok()) << pa.status();
  absl::StatusOr<MapLayout> l = LayoutArenaMap(TakeArenaMap(**pa));
  ASSERT_TRUE(l.ok());
  auto [z, i] = CellOf(*l, 8 * MiB / 4096);
  EXPECT_EQ(l->zones[z].cells[i].state, CellState::kHole);
  EXPECT_EQ(CentreOf(RasterizeLayout(*l), *l, l->CellRect(z, i)), kHoleColour);
}

TEST(ArenaMapRender, EveryColourOfTheLegendIsDistinct) {
  std::vector<Rgb> seen = {kBackgroundColour, kInkColour, kFrameColour};
  absl::StatusOr<MapLayout> l = LayoutArenaMap(TakeArenaMap(*MakeX86(512 * MiB)));
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->legend.size(), 2u + 11u + MIGRATE_TYPES);
  for (const MapLayout::Swatch& s : l->legend) {
    EXPECT_THAT(seen, ::testing::Not(::testing::Contains(s.colour))) << s.label.text;
    seen.push_back(s.colour);
  }
}

TEST(ArenaMapRender, ZoneHeadingsAndTheTitleAreDrawnInTheBitmapFont) {
  absl::StatusOr<MapLayout> l = LayoutArenaMap(TakeArenaMap(*MakeX86(512 * MiB)));
  ASSERT_TRUE(l.ok());
  EXPECT_THAT(l->zones[1].heading.text, HasSubstr("DMA32"));
  EXPECT_THAT(l->title.text, HasSubstr("x86_64"));
  const std::vector<uint8_t> px = RasterizeLayout(*l);
  // The first glyph of the heading ('D') has its left column set on all 7 rows: ink there.
  const TextItem& h = l->zones[1].heading;
  for (int y = 0; y < kGlyphHeight; ++y) {
    EXPECT_EQ(PixelAt(px, *l, h.x, h.y + y * l->text_scale), kInkColour) << "row " << y;
  }
  EXPECT_TRUE(GlyphPixel('H', 0, 0));
  EXPECT_FALSE(GlyphPixel('H', 2, 0));
  EXPECT_TRUE(GlyphPixel('H', 2, 3));
  EXPECT_EQ(GlyphPixel('\x01', 1, 0), GlyphPixel('?', 1, 0));
}

TEST(ArenaMapRender, PngDecodesToTheRasterizedPixels) {
  KnownState k = Known(512 * MiB);
  absl::StatusOr<MapLayout> l = LayoutArenaMap(TakeArenaMap(*k.pa));
  ASSERT_TRUE(l.ok());
  absl::StatusOr<std::string> png = RenderPng(*l);
  ASSERT_TRUE(png.ok()) << png.status();
  ASSERT_GT(png->size(), 8u);
  EXPECT_EQ(png->substr(1, 3), "PNG");
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  ASSERT_TRUE(png_image_begin_read_from_memory(&image, png->data(), png->size())) << image.message;
  image.format = PNG_FORMAT_RGB;
  EXPECT_EQ(int(image.width), l->width);
  EXPECT_EQ(int(image.height), l->height);
  std::vector<uint8_t> decoded(PNG_IMAGE_SIZE(image));
  ASSERT_TRUE(png_image_finish_read(&image, nullptr, decoded.data(), 0, nullptr)) << image.message;
  EXPECT_TRUE(decoded == RasterizeLayout(*l));
}

TEST(ArenaMapRender, SvgHasARectPerCellWithItsColourAndEscapesText) {
  KnownState k = Known(512 * MiB);
  ArenaMap map = TakeArenaMap(*k.pa);
  map.target_name = "a<b>&\"c\"";
  absl::StatusOr<MapLayout> l = LayoutArenaMap(map);
  ASSERT_TRUE(l.ok());
  const std::string svg = RenderSvg(*l);
  EXPECT_THAT(svg, HasSubstr("a&lt;b&gt;&amp;&quot;c&quot;"));
  EXPECT_THAT(svg, ::testing::Not(HasSubstr("a<b>")));
  size_t cells = 0;
  for (const auto& band : l->zones) cells += band.cells.size();
  size_t titles = 0;
  for (size_t at = svg.find("<title>"); at != std::string::npos; at = svg.find("<title>", at + 1)) ++titles;
  EXPECT_EQ(titles, cells);
  auto [fz, fi] = CellOf(*l, k.full_pfn);
  const PixelRect r = l->CellRect(fz, fi);
  EXPECT_THAT(svg, HasSubstr(absl::StrFormat("<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\">", r.x,
                                             r.y, r.w, r.h, MigratetypeColour(k.full_mt).Hex())));
}

TEST(ArenaMapRender, JsonIsValidAndListsEveryCell) {
  KnownState k = Known(512 * MiB);
  absl::StatusOr<MapLayout> l = LayoutArenaMap(TakeArenaMap(*k.pa));
  ASSERT_TRUE(l.ok());
  const std::string json = RenderJson(*l);
  // Valid JSON (protobuf's parser, into a Struct), ...
  google::protobuf::Struct parsed;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &parsed).ok());
  // ... whose zones list every cell: "cells":[i,j,...] once a zone, one index a cell. (Read from the
  // text: Struct's map accessors crash in this Debian protobuf under TSan.)
  size_t at = 0;
  for (const MapLayout::ZoneBand& band : l->zones) {
    at = json.find("\"cells\":[", at);
    ASSERT_NE(at, std::string::npos) << zone_name(band.type);
    const size_t end = json.find(']', at);
    const std::string list = json.substr(at + 9, end - at - 9);
    EXPECT_EQ(static_cast<size_t>(std::count(list.begin(), list.end(), ',')) + 1, band.cells.size())
        << zone_name(band.type);
    at = end;
  }
  EXPECT_EQ(json.find("\"cells\":[", at), std::string::npos);
  EXPECT_THAT(json, HasSubstr("Node 0, zone      DMA "));
}

TEST(ArenaMapRender, OptionsOutOfRangeAreRefusedByName) {
  const ArenaMap map = TakeArenaMap(*MakeX86(512 * MiB));
  RenderOptions o;
  o.columns = 0;
  absl::StatusOr<MapLayout> l = LayoutArenaMap(map, o);
  EXPECT_EQ(l.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(l.status().message(), HasSubstr("columns is 0; expected 1..1024"));
  o = {};
  o.max_cells = 0;
  EXPECT_THAT(LayoutArenaMap(map, o).status().message(), HasSubstr("max_cells"));
}

TEST(ArenaMapRender, AFileNamedNeitherPngNorSvgIsRefused) {
  absl::StatusOr<MapLayout> l = LayoutArenaMap(TakeArenaMap(*MakeX86(512 * MiB)));
  ASSERT_TRUE(l.ok());
  const absl::Status s = WriteArenaMapFile(*l, "/nonexistent-dir/arena.gif");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("name it .png or .svg"));
  EXPECT_FALSE(WriteArenaMapFile(*l, "/nonexistent-dir/arena.png").ok());
}

TEST(ArenaMapProto, ARoundTripKeepsTheMap) {
  KnownState k = Known(512 * MiB);
  const ArenaMap map = TakeArenaMap(*k.pa);
  v1::GetArenaMapResponse reply;
  ArenaMapToProto(map, &reply);
  absl::StatusOr<ArenaMap> back = ArenaMapFromProto(reply);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->zones.size(), map.zones.size());
  EXPECT_EQ(back->target_name, "x86_64");
  for (size_t z = 0; z < map.zones.size(); ++z) {
    EXPECT_EQ(back->zones[z].entries, map.zones[z].entries);
    EXPECT_EQ(back->zones[z].nr_free, map.zones[z].nr_free);
    EXPECT_EQ(back->zones[z].first_pfn, map.zones[z].first_pfn);
  }
}

TEST(ArenaMapProto, AnInconsistentReplyIsRefusedWithWhatIsWrong) {
  const ArenaMap map = TakeArenaMap(*MakeX86(512 * MiB));
  v1::GetArenaMapResponse reply;
  ArenaMapToProto(map, &reply);
  v1::GetArenaMapResponse short_types = reply;
  short_types.mutable_zones(0)->mutable_migratetype()->pop_back();
  EXPECT_THAT(ArenaMapFromProto(short_types).status().message(), HasSubstr("expected one of each an entry"));
  v1::GetArenaMapResponse too_many = reply;
  too_many.mutable_zones(1)->set_free_pages(0, 1u << 30);
  EXPECT_THAT(ArenaMapFromProto(too_many).status().message(), HasSubstr("zone DMA32 entry 0"));
  v1::GetArenaMapResponse bad_zone = reply;
  bad_zone.mutable_zones(0)->set_zone("Nowhere\n");
  EXPECT_THAT(ArenaMapFromProto(bad_zone).status().message(), HasSubstr("unknown zone 'Nowhere\\n'"));
  v1::GetArenaMapResponse bad_ppe = reply;
  bad_ppe.set_pageblocks_per_entry(3);
  EXPECT_EQ(ArenaMapFromProto(bad_ppe).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace physmem
