/// EXIF orientation (tag 0x0112) and the transpose that undoes it, as `ImageOps.exif_transpose`.
public enum Orientation: Int, Sendable {
    case normal = 1, flipHorizontal, rotate180, flipVertical, transpose, rotate270, transverse, rotate90

    /// Finds tag 0x0112 in IFD0 of a TIFF block (the payload of a JPEG APP1 "Exif\0\0" segment or a
    /// PNG eXIf chunk). Anything malformed means "no orientation": PIL ignores broken EXIF too.
    static func fromTIFF(_ b: UnsafeRawBufferPointer) -> Orientation? {
        guard b.count >= 8 else { return nil }
        let little: Bool
        switch (b[0], b[1]) {
        case (0x49, 0x49): little = true
        case (0x4D, 0x4D): little = false
        default: return nil
        }
        func u16(_ o: Int) -> Int? {
            guard o >= 0, o + 2 <= b.count else { return nil }
            return little ? Int(b[o]) | Int(b[o + 1]) << 8 : Int(b[o]) << 8 | Int(b[o + 1])
        }
        func u32(_ o: Int) -> Int? {
            guard let a = u16(o), let c = u16(o + 2) else { return nil }
            return little ? a | c << 16 : a << 16 | c
        }
        guard u16(2) == 42, let ifd = u32(4), let count = u16(ifd) else { return nil }
        for i in 0..<count {
            let entry = ifd + 2 + 12 * i
            guard let tag = u16(entry), let type = u16(entry + 2) else { return nil }
            guard tag == 0x0112 else { continue }
            // SHORT is what the spec says; some writers use LONG.
            let value: Int?
            switch type {
            case 3: value = u16(entry + 8)
            case 4: value = u32(entry + 8)
            default: value = nil
            }
            return value.flatMap(Orientation.init(rawValue:))
        }
        return nil
    }

    /// PIL also honours `tiff:Orientation` in XMP when EXIF has none.
    static func fromXMP(_ b: UnsafeRawBufferPointer) -> Orientation? {
        let key = Array("tiff:Orientation".utf8)
        guard b.count > key.count + 2 else { return nil }
        var i = 0
        while i + key.count + 2 <= b.count {
            if b[i] == key[0], (0..<key.count).allSatisfy({ b[i + $0] == key[$0] }) {
                var j = i + key.count
                if b[j] == UInt8(ascii: "=") && b[j + 1] == UInt8(ascii: "\"") { j += 2 }
                else if b[j] == UInt8(ascii: ">") { j += 1 }
                else { i += 1; continue }
                guard j < b.count, b[j] >= 0x30, b[j] <= 0x39 else { return nil }
                return Orientation(rawValue: Int(b[j] - 0x30))
            }
            i += 1
        }
        return nil
    }
}

extension RGBImage {
    /// Applies the transpose that `ImageOps.exif_transpose` picks for `orientation`.
    public func oriented(_ orientation: Orientation) -> RGBImage {
        if orientation == .normal { return self }
        let w = width, h = height
        let swaps = [.transpose, .rotate270, .transverse, .rotate90].contains(orientation)
        let ow = swaps ? h : w, oh = swaps ? w : h
        var out = [UInt8](repeating: 0, count: pixels.count)
        pixels.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for y in 0..<oh {
                    for x in 0..<ow {
                        // Source pixel for output (x, y).
                        let (sx, sy): (Int, Int)
                        switch orientation {
                        case .normal: (sx, sy) = (x, y)
                        case .flipHorizontal: (sx, sy) = (w - 1 - x, y)
                        case .rotate180: (sx, sy) = (w - 1 - x, h - 1 - y)
                        case .flipVertical: (sx, sy) = (x, h - 1 - y)
                        case .transpose: (sx, sy) = (y, x)
                        case .rotate270: (sx, sy) = (y, h - 1 - x)      // 90° clockwise
                        case .transverse: (sx, sy) = (w - 1 - y, h - 1 - x)
                        case .rotate90: (sx, sy) = (w - 1 - y, x)       // 90° counter-clockwise
                        }
                        let s = 3 * (sy * w + sx), d = 3 * (y * ow + x)
                        dst[d] = src[s]; dst[d + 1] = src[s + 1]; dst[d + 2] = src[s + 2]
                    }
                }
            }
        }
        return RGBImage(width: ow, height: oh, pixels: out)
    }
}
