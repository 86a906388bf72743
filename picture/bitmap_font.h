// A 5x7 bitmap font for the printable ASCII characters, for the text of the arena map PNG (zone
// names, the legend, the title).
//
// Why a built-in font: libpng only encodes pixels; drawing text needs glyphs, and a font library
// (FreeType) plus a font file would be one more dependency and a file to find at run time, for a
// few dozen short labels. The glyphs are the classic 5x7 LCD character-generator shapes (the
// HD44780's ROM, as most small-display libraries carry them), one byte per column, bit 0 the top
// row. The SVG and the live page use real text instead.
//
// Who uses it: picture/arena_map_render.cc. Thread-safety: constants and pure functions.
#ifndef PHYSMEM_PICTURE_BITMAP_FONT_H_
#define PHYSMEM_PICTURE_BITMAP_FONT_H_

#include <cstdint>
#include <string_view>

namespace physmem {

inline constexpr int kGlyphWidth = 5;
inline constexpr int kGlyphHeight = 7;
inline constexpr int kGlyphAdvance = 6;  // one blank column between characters

// Whether the pixel (x, y) of c's glyph is set, 0 <= x < 5, 0 <= y < 7. Characters outside
// 0x20..0x7e draw as '?'.
bool GlyphPixel(char c, int x, int y);

// Width in pixels of `text` drawn at `scale` (each glyph pixel a scale x scale square).
inline int TextWidth(std::string_view text, int scale) {
  return text.empty() ? 0 : (static_cast<int>(text.size()) * kGlyphAdvance - 1) * scale;
}

}  // namespace physmem

#endif  // PHYSMEM_PICTURE_BITMAP_FONT_H_
