#include "server/arena_page.h"

#include "absl/status/statusor.h"
#include "allocator/arena_map.h"
#include "picture/arena_map_render.h"

namespace physmem {
namespace {

// The page draws exactly the layout the server computed (positions, colours, texts), so a cell
// is at the same pixel here as in the PNG; the canvas sits at the page's top-left corner. Text
// uses the browser's own monospace font. `refreshes` counts the snapshots drawn since the page
// loaded; `status` says when a fetch failed (the last picture stays).
constexpr std::string_view kPage = R"html(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>physmemd arena</title>
<style>
  body { margin: 0; font-family: monospace; background: #fff; color: #000; }
  canvas { display: block; }
  #info { padding: 8px; }
  pre { margin: 4px 0; }
</style>
</head>
<body>
<canvas id="map" width="1" height="1"></canvas>
<div id="info">
  <div>refreshes: <span id="refreshes">0</span> <span id="status"></span></div>
  <div>/proc/buddyinfo:</div>
  <pre id="buddyinfo"></pre>
</div>
<script>
"use strict";
let refreshes = 0;
function draw(m) {
  const canvas = document.getElementById("map");
  canvas.width = m.width;
  canvas.height = m.height;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, m.width, m.height);
  const fontPx = 7 * m.text_scale;
  ctx.font = (fontPx + 2) + "px monospace";
  ctx.textBaseline = "bottom";
  const text = (t) => { ctx.fillStyle = "#000000"; ctx.fillText(t.text, t.x, t.y + fontPx); };
  text(m.title);
  for (const z of m.zones) {
    text(z.heading);
    ctx.fillStyle = "#606060";
    const f = z.frame;
    ctx.fillRect(f[0], f[1], f[2], 1); ctx.fillRect(f[0], f[1] + f[3] - 1, f[2], 1);
    ctx.fillRect(f[0], f[1], 1, f[3]); ctx.fillRect(f[0] + f[2] - 1, f[1], 1, f[3]);
    z.cells.forEach((c, i) => {
      ctx.fillStyle = m.palette[c];
      ctx.fillRect(z.x0 + (i % m.columns) * m.pitch, z.y0 + Math.floor(i / m.columns) * m.pitch, m.cell_px, m.cell_px);
    });
  }
  for (const s of m.legend) {
    ctx.fillStyle = s.colour;
    ctx.fillRect(s.rect[0], s.rect[1], s.rect[2], s.rect[3]);
    text(s.label);
  }
  document.getElementById("buddyinfo").textContent = m.buddyinfo;
}
async function refresh() {
  try {
    const r = await fetch("/arena.json", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    draw(await r.json());
    refreshes += 1;
    document.getElementById("refreshes").textContent = String(refreshes);
    document.getElementById("status").textContent = "";
  } catch (e) {
    document.getElementById("status").textContent = "(last refresh failed: " + e.message + ")";
  }
  setTimeout(refresh, 1000);
}
refresh();
</script>
</body>
</html>
)html";

}  // namespace

std::optional<HttpReply> ServeArena(const PageAllocator& pa, std::string_view path) {
  if (path == "/arena") return HttpReply{200, "text/html; charset=utf-8", std::string(kPage)};
  if (path != "/arena.json" && path != "/arena.png") return std::nullopt;
  absl::StatusOr<MapLayout> layout = LayoutArenaMap(TakeArenaMap(pa));
  if (!layout.ok()) return HttpReply{500, "text/plain; charset=utf-8", layout.status().ToString() + "\n"};
  if (path == "/arena.json") return HttpReply{200, "application/json", RenderJson(*layout)};
  absl::StatusOr<std::string> png = RenderPng(*layout);
  if (!png.ok()) return HttpReply{500, "text/plain; charset=utf-8", png.status().ToString() + "\n"};
  return HttpReply{200, "image/png", std::move(*png)};
}

}  // namespace physmem
