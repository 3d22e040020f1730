import Foundation
import VLMImage
import VLMTensor

// Synthetic "shapes" scenes for the demo dataset (`vlmsh make-demo-data`): one to four flat-coloured
// shapes on a plain, graded or lightly noisy background, each alone in one cell of a 3×3 grid, so
// that kind, colour, size, position and count are unambiguous and can be asked about.


/// The shape kinds, each drawn inside the unit box |u|, |v| ≤ 1 (v pointing down), upright.
public enum ShapeKind: String, CaseIterable, Sendable, Codable {
    case circle, square, triangle, star, cross, heart, diamond

    /// "stars", "crosses": the name in a tiled scene's caption.
    public var plural: String { self == .cross ? "crosses" : rawValue + "s" }

    /// Whether the point (u, v) of the unit box is inside the shape.
    @inlinable
    public func contains(_ u: Double, _ v: Double) -> Bool {
        switch self {
        case .circle:
            return u * u + v * v <= 1
        case .square:
            return abs(u) <= 0.86 && abs(v) <= 0.86
        case .diamond:
            return abs(u) + abs(v) <= 1
        case .triangle:
            // Apex at the top, base at v = 0.85 spanning the box's width.
            return v <= 0.85 && abs(u) <= (v + 1) / 1.85
        case .cross:
            let arm = 0.34
            return (abs(u) <= arm && abs(v) <= 1) || (abs(v) <= arm && abs(u) <= 1)
        case .heart:
            // (x² + y² − 1)³ − x²y³ ≤ 0 spans x ∈ ±1.139, y ∈ [−1, 1.236]; mapped onto the box.
            let x = 1.14 * u, y = 0.118 - 1.118 * v
            let s = x * x + y * y - 1
            return s * s * s - x * x * y * y * y <= 0
        case .star:
            return ShapeKind.insideStar(u, v)
        }
    }

    /// (inner, outer): every point of the unit box closer to the centre than `inner` is inside
    /// the shape, every point farther than `outer` outside (measured, then rounded to be safe).
    @inlinable
    public var radii: (inner: Double, outer: Double) {
        switch self {
        case .circle: return (0.999, 1.001)
        case .square: return (0.859, 1.22)
        case .diamond: return (0.7, 1.001)
        case .triangle: return (0.47, 1.32)
        case .cross: return (0.47, 1.06)
        case .heart: return (0.77, 1.19)
        case .star: return (0.37, 1.08)
        }
    }

    /// Five-pointed star, point up, inner radius 0.45 of the outer, moved down so that its
    /// vertical extent [−1, 0.809] is centred in the box.
    @usableFromInline static let starX: [Double] = starVertices.map(\.0)
    @usableFromInline static let starY: [Double] = starVertices.map(\.1)
    static let starVertices: [(Double, Double)] = (0..<10).map { (k: Int) -> (Double, Double) in
        let angle: Double = (-90.0 + 36.0 * Double(k)) * Double.pi / 180
        let radius: Double = k % 2 == 0 ? 1.0 : 0.45
        return (radius * cos(angle), radius * sin(angle) + 0.0955)
    }

    @usableFromInline static func insideStar(_ u: Double, _ v: Double) -> Bool {
        // Even–odd crossing test over the ten edges.
        var inside = false
        starX.withUnsafeBufferPointer { xs in
            starY.withUnsafeBufferPointer { ys in
                var j = 9
                for i in 0..<10 {
                    let xi = xs[i], yi = ys[i], xj = xs[j], yj = ys[j]
                    if (yi > v) != (yj > v), u < (xj - xi) * (v - yi) / (yj - yi) + xi { inside.toggle() }
                    j = i
                }
            }
        }
        return inside
    }
}

/// Named colours, well apart in RGB. The first eight are shape colours; white, black, grey and
/// beige are backgrounds (a shape never has its background's colour).
public enum ShapeColour: String, CaseIterable, Sendable, Codable {
    case red, green, blue, yellow, purple, orange, white, black, grey, beige

    public static let shapeColours: [ShapeColour] = [.red, .green, .blue, .yellow, .purple, .orange, .white, .black]
    public static let backgrounds: [ShapeColour] = [.white, .grey, .black, .beige]

    public var rgb: (UInt8, UInt8, UInt8) {
        switch self {
        case .red: return (220, 30, 30)
        case .green: return (40, 170, 60)
        case .blue: return (40, 80, 220)
        case .yellow: return (240, 210, 40)
        case .purple: return (140, 60, 190)
        case .orange: return (245, 140, 30)
        case .white: return (250, 250, 250)
        case .black: return (20, 20, 20)
        case .grey: return (128, 128, 128)
        case .beige: return (220, 200, 160)
        }
    }
}

public enum ShapeSize: String, CaseIterable, Sendable, Codable {
    case small, large

    /// Half the shape's extent as a fraction of a grid cell's side.
    public var fractionOfCell: Double { self == .small ? 0.27 : 0.40 }
}

/// How the background is filled around its base colour.
public enum BackgroundStyle: String, CaseIterable, Sendable, Codable {
    /// The base colour everywhere.
    case plain
    /// Top to bottom from 14 levels brighter to 14 darker (clamped).
    case gradient
    /// A per-pixel grey offset in −8...8 (clamped).
    case noise
    /// Diagonal stripes 12 levels brighter every other 6 pixels (the free layout's texture).
    case stripes

    /// The styles of the grid layouts (scattered, tiles, copies).
    public static let grid: [BackgroundStyle] = [.plain, .gradient, .noise]
}

/// One cell of the 3×3 grid: column 0...2 left to right, row 0...2 top to bottom.
public struct GridCell: Hashable, Sendable, Codable, Comparable {
    public let column: Int
    public let row: Int

    public init(column: Int, row: Int) {
        precondition((0..<3).contains(column) && (0..<3).contains(row))
        self.column = column
        self.row = row
    }

    public static let all: [GridCell] = (0..<3).flatMap { row in (0..<3).map { GridCell(column: $0, row: row) } }

    /// "top left", "top center", …, "center", …, "bottom right".
    public var name: String {
        if column == 1 && row == 1 { return "center" }
        return ["top", "middle", "bottom"][row] + " " + ["left", "center", "right"][column]
    }

    /// Reading order, row by row: the order shapes are listed in captions, and the order of a
    /// row-major patch grid's image tokens.
    public static func < (a: GridCell, b: GridCell) -> Bool {
        (a.row, a.column) < (b.row, b.column)
    }
}

/// A shape in a scene. Its square extent (centre ± radius) lies inside its grid cell with at least
/// one pixel to spare on every side, so no pixel is touched by two shapes.
public struct PlacedShape: Sendable, Equatable, Codable {
    public let kind: ShapeKind
    public let colour: ShapeColour
    public let size: ShapeSize
    public let cell: GridCell
    /// Centre in pixel coordinates (pixel (x, y) covers [x, x+1) × [y, y+1)); multiples of 1/4.
    public let centerX: Double
    public let centerY: Double
    /// Half the side of the shape's square extent, in pixels.
    public let radius: Double
    /// Turned by this many radians (clockwise on screen) and widened by `stretch` (narrowed as
    /// much in height): the free layout's variations; 0 and 1 draw the shape upright.
    public let angle: Double
    public let stretch: Double
    /// The colour drawn, when it is a variation of `colour`'s own.
    public let fill: [UInt8]?

    public init(kind: ShapeKind, colour: ShapeColour, size: ShapeSize, cell: GridCell,
                centerX: Double, centerY: Double, radius: Double, angle: Double = 0, stretch: Double = 1, fill: [UInt8]? = nil) {
        self.kind = kind; self.colour = colour; self.size = size; self.cell = cell
        self.centerX = centerX; self.centerY = centerY; self.radius = radius
        self.angle = angle; self.stretch = stretch; self.fill = fill
    }

    /// The unit-box point of pixel-space offset (dx, dy) from the centre, undoing turn and stretch.
    @inlinable
    func unitPoint(_ dx: Double, _ dy: Double) -> (Double, Double) {
        if angle == 0 && stretch == 1 { return (dx / radius, dy / radius) }
        let c = cos(angle), s = sin(angle)
        return ((dx * c + dy * s) / (radius * stretch), (dy * c - dx * s) * stretch / radius)
    }

    /// Subsamples per pixel side for antialiasing: coverage is counted on a 4×4 grid.
    public static let subsamples = 4

    /// How many of the pixel's 16 subsamples fall inside the shape (0...16). Pixels whose
    /// subsamples all lie within the shape's inscribed disc, or all beyond its circumscribed
    /// one, are settled without sampling; the result always equals `sampledCoverage`.
    @inlinable
    public func coverage(pixelX x: Int, pixelY y: Int) -> Int {
        let n = Self.subsamples
        let h = 0.5 / Double(n)
        let x0 = (Double(x) + h - centerX) / radius, x1 = (Double(x) + 1 - h - centerX) / radius
        let y0 = (Double(y) + h - centerY) / radius, y1 = (Double(y) + 1 - h - centerY) / radius
        let nearX = x0 > 0 ? x0 : (x1 < 0 ? x1 : 0), nearY = y0 > 0 ? y0 : (y1 < 0 ? y1 : 0)
        let farX = max(abs(x0), abs(x1)), farY = max(abs(y0), abs(y1))
        // Turning keeps distances; stretching changes them by at most this factor.
        let widest = max(stretch, 1 / stretch)
        let inner = kind.radii.inner / widest, outer = kind.radii.outer * widest
        if farX * farX + farY * farY < inner * inner { return n * n }
        if nearX * nearX + nearY * nearY > outer * outer { return 0 }
        return sampledCoverage(pixelX: x, pixelY: y)
    }

    /// `coverage` by testing every subsample.
    @inlinable
    public func sampledCoverage(pixelX x: Int, pixelY y: Int) -> Int {
        let n = Self.subsamples
        let step = 1.0 / Double(n)
        var count = 0
        for j in 0..<n {
            let dy = Double(y) + (Double(j) + 0.5) * step - centerY
            for i in 0..<n {
                let (u, v) = unitPoint(Double(x) + (Double(i) + 0.5) * step - centerX, dy)
                if kind.contains(u, v) { count += 1 }
            }
        }
        return count
    }

    /// The pixels that may be covered: columns and rows overlapping the centre ± the reach.
    public var pixelBounds: (x: Range<Int>, y: Range<Int>) {
        let r = reach
        return (Int((centerX - r).rounded(.down))..<Int((centerX + r).rounded(.up)),
                Int((centerY - r).rounded(.down))..<Int((centerY + r).rounded(.up)))
    }

    /// How far from the centre the shape may reach, in pixels: `radius` when upright, more when
    /// turned or stretched (the circumscribed circle, widened by the stretch).
    public var reach: Double {
        angle == 0 && stretch == 1 ? radius : radius * kind.radii.outer * max(stretch, 1 / stretch)
    }
}

/// How a scene's shapes fill the 3×3 grid.
public enum SceneLayout: String, CaseIterable, Sendable, Codable {
    /// One to four shapes (uniformly), each in its own random cell.
    case scattered
    /// One shape (kind, colour, size) in all nine cells. Every patch of a grid-aligned vision
    /// tower then shows the object, so alignment on these captions teaches the tower shapes and
    /// colours before the language model has to find which image token holds which object.
    case tiles
    /// One shape (kind, colour, size) in one to nine random cells ("Three small red stars …"):
    /// alignment that also shows empty cells, so the language model learns to read the image
    /// tokens that hold an object and to count them.
    case copies
    /// One to four shapes anywhere and of any size from about 8 % to 26 % of the side as a radius
    /// (each centred in its own cell, none overlapping), turned and stretched a little, in
    /// jittered colours, on any background (also unnamed colours and stripes), sometimes with
    /// hard edges, at one to three times the image size: pictures as other programs draw them.
    /// A quarter of the scenes are `scattered` ones with centred shapes.
    case free
}

/// What `ShapeScene.random` draws.
public struct SceneStyle: Sendable, Equatable {
    public var layout: SceneLayout
    /// How far a shape's centre may move within its cell: 0 centres it, 1 lets it go anywhere
    /// that keeps a pixel between the shape and the cell's edge.
    public var jitter: Double

    public init(layout: SceneLayout = .scattered, jitter: Double = 1) {
        self.layout = layout; self.jitter = jitter
    }
}

/// A scene: background and shapes in distinct grid cells, listed in reading order. Everything,
/// down to the noise, follows from `random(seed:imageSize:style:)`.
public struct ShapeScene: Sendable, Equatable, Codable {
    public let imageSize: Int
    public let background: ShapeColour
    public let backgroundStyle: BackgroundStyle
    /// Seeds the background noise (unused by the other styles).
    public let noiseSeed: UInt64
    public let shapes: [PlacedShape]
    /// The background's colour when it has no name (the free layout's pastels and dark tones);
    /// captions then leave the background out.
    public let backgroundFill: [UInt8]?
    /// Shapes drawn without antialiasing (a pixel is the shape's when half of it is covered).
    public let hardEdges: Bool

    /// Image sides the layout is made for (the cross's arms and the small star need a few pixels).
    public static let imageSizes = 48...1024

    public init(imageSize: Int, background: ShapeColour, backgroundStyle: BackgroundStyle,
                noiseSeed: UInt64, shapes: [PlacedShape], backgroundFill: [UInt8]? = nil, hardEdges: Bool = false) {
        self.imageSize = imageSize; self.background = background; self.backgroundStyle = backgroundStyle
        self.noiseSeed = noiseSeed; self.shapes = shapes; self.backgroundFill = backgroundFill; self.hardEdges = hardEdges
    }

    /// A random scene: background colour and style, then the shapes the layout asks for, each
    /// with a colour other than the background's, a size, and a centre `jitter` lets move around
    /// its cell. Scattered kinds and colours may repeat within a scene.
    public static func random(seed: UInt64, imageSize: Int, style: SceneStyle = SceneStyle()) -> ShapeScene {
        precondition(imageSizes.contains(imageSize), "image size \(imageSize) is outside \(imageSizes)")
        precondition((0...1).contains(style.jitter), "jitter \(style.jitter) is outside 0...1")
        var rng = SeededRandom(seed: seed)
        // A quarter of the free layout's pictures are the scattered layout's, centred in their
        // cells, so a model trained on it keeps answering about those.
        if style.layout == .free {
            if rng.below(4) > 0 { return randomFree(rng: &rng, imageSize: imageSize) }
            return random(seed: rng.next(), imageSize: imageSize, style: SceneStyle(layout: .scattered, jitter: 0))
        }
        let background = rng.pick(ShapeColour.backgrounds)
        let backgroundStyle = rng.pick(BackgroundStyle.grid)
        let noiseSeed = rng.next()
        let colours = ShapeColour.shapeColours.filter { $0 != background }
        let cellSide = Double(imageSize) / 3
        func place(_ kind: ShapeKind, _ colour: ShapeColour, _ size: ShapeSize, in cell: GridCell) -> PlacedShape {
            let radius = size.fractionOfCell * cellSide
            func coordinate(_ index: Int) -> Double {
                // The centre (in quarter pixels) may range over the middle `jitter` fraction of the
                // room that leaves a pixel between the shape's extent and the cell's edge.
                let lo = ((Double(index) * cellSide + radius + 1) * 4).rounded(.up)
                let hi = ((Double(index + 1) * cellSide - radius - 1) * 4).rounded(.down)
                let half = (hi - lo) / 2 * style.jitter
                let first = ((lo + hi) / 2 - half).rounded(.up), last = ((lo + hi) / 2 + half).rounded(.down)
                if last <= first { return ((lo + hi) / 2).rounded(.down) / 4 }
                return (first + Double(rng.below(Int(last - first) + 1))) / 4
            }
            let x = coordinate(cell.column), y = coordinate(cell.row)
            return PlacedShape(kind: kind, colour: colour, size: size, cell: cell, centerX: x, centerY: y, radius: radius)
        }
        func draw() -> (ShapeKind, ShapeColour, ShapeSize) {
            (rng.pick(ShapeKind.allCases), rng.pick(colours), rng.pick(ShapeSize.allCases))
        }
        var shapes: [PlacedShape] = []
        switch style.layout {
        case .scattered:
            let count = 1 + rng.below(4)
            var cells = GridCell.all
            rng.shuffle(&cells)
            for cell in cells.prefix(count) {
                let (kind, colour, size) = draw()
                shapes.append(place(kind, colour, size, in: cell))
            }
        case .tiles:
            let (kind, colour, size) = draw()
            shapes = GridCell.all.map { place(kind, colour, size, in: $0) }
        case .copies:
            let (kind, colour, size) = draw()
            var cells = GridCell.all
            rng.shuffle(&cells)
            shapes = cells.prefix(1 + rng.below(cells.count)).map { place(kind, colour, size, in: $0) }
        case .free:
            preconditionFailure("drawn by randomFree")
        }
        shapes.sort { $0.cell < $1.cell }
        return ShapeScene(imageSize: imageSize, background: background, backgroundStyle: backgroundStyle,
                          noiseSeed: noiseSeed, shapes: shapes)
    }

    /// The free layout: see `SceneLayout.free`. Shapes are listed in reading order of their cells.
    static func randomFree(rng: inout SeededRandom, imageSize: Int) -> ShapeScene {
        let side = min(imageSize * rng.pick([2, 2, 3, 4, 6]) / 2, imageSizes.upperBound)
        let named = rng.below(3) > 0
        let background: ShapeColour = rng.pick(ShapeColour.backgrounds)
        var fill: [UInt8]?
        if !named {
            // A pastel (light, weakly saturated) or a dark tone of a random hue.
            let hue = rng.unit(), light = rng.coin()
            let saturation = 0.1 + 0.25 * rng.unit(), value = light ? 0.85 + 0.15 * rng.unit() : 0.1 + 0.25 * rng.unit()
            fill = (0..<3).map { k in
                let channel = max(0, min(1, abs((hue * 6 + [0.0, 4.0, 2.0][k]).truncatingRemainder(dividingBy: 6) - 3) - 1))
                return UInt8((255 * value * (1 - saturation * channel)).rounded())
            }
        }
        let backgroundStyle: BackgroundStyle = rng.pick([.plain, .plain, .gradient, .noise, .stripes])
        let noiseSeed = rng.next()
        let base = fill ?? [background.rgb.0, background.rgb.1, background.rgb.2]
        func far(_ c: ShapeColour) -> Bool {
            let rgb = [c.rgb.0, c.rgb.1, c.rgb.2]
            return zip(rgb, base).reduce(0) { $0 + abs(Int($1.0) - Int($1.1)) } > 160
        }
        let colours = ShapeColour.shapeColours.filter { $0 != background && far($0) }
        var cells = GridCell.all
        rng.shuffle(&cells)
        let cellSide = Double(side) / 3
        var shapes: [PlacedShape] = []
        for cell in cells.prefix(1 + rng.below(4)) {
            let kind = rng.pick(ShapeKind.allCases), colour = rng.pick(colours)
            let rgb = [colour.rgb.0, colour.rgb.1, colour.rgb.2]
            let jittered = rgb.map { UInt8(max(0, min(255, Int($0) + rng.below(41) - 20))) }
            let angle = kind == .circle ? 0 : (rng.unit() - 0.5) * 0.5
            let stretch = 0.87 + 0.26 * rng.unit()
            // Largest first tries, smaller ones when the shape does not fit among the others. No
            // radius under 8 %: at 96 pixels a smaller shape fits inside one 16-pixel patch, where
            // a star and a cross differ by a few pixels.
            for attempt in 0..<24 {
                let fraction = 0.08 + (0.18 - 0.005 * Double(attempt)) * rng.unit()
                let radius = fraction * Double(side)
                let probe = PlacedShape(kind: kind, colour: colour, size: .small, cell: cell, centerX: 0, centerY: 0,
                                        radius: radius, angle: angle, stretch: stretch)
                let margin = probe.reach + 1
                let x0 = max(Double(cell.column) * cellSide, margin), x1 = min(Double(cell.column + 1) * cellSide, Double(side) - margin)
                let y0 = max(Double(cell.row) * cellSide, margin), y1 = min(Double(cell.row + 1) * cellSide, Double(side) - margin)
                guard x0 < x1, y0 < y1 else { continue }
                let x = x0 + (x1 - x0) * rng.unit(), y = y0 + (y1 - y0) * rng.unit()
                guard shapes.allSatisfy({ ($0.centerX - x) * ($0.centerX - x) + ($0.centerY - y) * ($0.centerY - y)
                                          > ($0.reach + margin + 1) * ($0.reach + margin + 1) }) else { continue }
                // The demo's two sizes are radii of 9 % and 13.3 % of the side: the boundary between.
                shapes.append(PlacedShape(kind: kind, colour: colour, size: fraction < 0.115 ? .small : .large, cell: cell,
                                          centerX: x, centerY: y, radius: radius, angle: angle, stretch: stretch, fill: jittered))
                break
            }
        }
        shapes.sort { $0.cell < $1.cell }
        return ShapeScene(imageSize: side, background: background, backgroundStyle: backgroundStyle, noiseSeed: noiseSeed,
                          shapes: shapes, backgroundFill: fill, hardEdges: rng.below(4) == 0)
    }

    /// The scene as pixels: background, then each shape blended by its 4×4 subsample coverage
    /// (pixels fully inside a shape have exactly the shape's colour).
    public func render() -> RGBImage {
        let side = imageSize
        var pixels = [UInt8](repeating: 0, count: side * side * 3)
        let base = backgroundFill.map { ($0[0], $0[1], $0[2]) } ?? background.rgb
        pixels.withUnsafeMutableBufferPointer { p in
            var rng = SeededRandom(seed: noiseSeed)
            for y in 0..<side {
                var rowOffset = 0
                if backgroundStyle == .gradient {
                    rowOffset = Int((14.0 - 28.0 * Double(y) / Double(max(side - 1, 1))).rounded())
                }
                for x in 0..<side {
                    var offset = backgroundStyle == .noise ? rng.below(17) - 8 : rowOffset
                    if backgroundStyle == .stripes && (x + y) / 6 % 2 == 1 { offset = 12 }
                    let i = 3 * (y * side + x)
                    p[i] = clamp(Int(base.0) + offset)
                    p[i + 1] = clamp(Int(base.1) + offset)
                    p[i + 2] = clamp(Int(base.2) + offset)
                }
            }
            let full = PlacedShape.subsamples * PlacedShape.subsamples
            for shape in shapes {
                let (fr, fg, fb) = shape.fill.map { ($0[0], $0[1], $0[2]) } ?? shape.colour.rgb
                let bounds = shape.pixelBounds
                for y in max(bounds.y.lowerBound, 0)..<min(bounds.y.upperBound, side) {
                    for x in max(bounds.x.lowerBound, 0)..<min(bounds.x.upperBound, side) {
                        var a = shape.coverage(pixelX: x, pixelY: y)
                        if hardEdges { a = a * 2 >= full ? full : 0 }
                        if a == 0 { continue }
                        let i = 3 * (y * side + x)
                        if a == full {
                            p[i] = fr; p[i + 1] = fg; p[i + 2] = fb
                        } else {
                            func blend(_ under: UInt8, _ over: UInt8) -> UInt8 {
                                UInt8((Int(under) * (full - a) + Int(over) * a + full / 2) / full)
                            }
                            p[i] = blend(p[i], fr); p[i + 1] = blend(p[i + 1], fg); p[i + 2] = blend(p[i + 2], fb)
                        }
                    }
                }
            }
        }
        return RGBImage(width: side, height: side, pixels: pixels)
    }
}

@inline(__always) private func clamp(_ v: Int) -> UInt8 { UInt8(min(max(v, 0), 255)) }
