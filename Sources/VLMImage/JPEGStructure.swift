import VLMFormats

/// A walk over every marker segment of a JPEG file, done in Swift before libjpeg sees the bytes.
///
/// libjpeg reports fatal errors through `error_exit`, which must never return, and Swift cannot
/// `setjmp`. So the file is checked here against every condition libjpeg treats as fatal
/// (segment lengths, table indices, Huffman tables, sampling factors, scan parameters, quant tables
/// present when a scan starts, markers libjpeg does not know), and libjpeg only decodes files that
/// pass. Damage inside entropy-coded data is only ever a libjpeg *warning*. The one remaining
/// warning that matters, the source running dry, cannot happen: a file without EOI is refused here.
struct JPEGStructure {
    struct Component { var id: UInt8; var h: Int; var v: Int; var quantTable: Int }

    var width = 0
    var height = 0
    var components: [Component] = []
    var progressive = false
    var orientation: Orientation = .normal

    /// Validates `bytes` and returns the facts the decoder needs. `maxPixels` is checked at SOF,
    /// before anything is allocated for pixels.
    init(_ b: UnsafeRawBufferPointer, path: String, maxPixels: Int) throws {
        func fail(_ message: String) -> FormatError { FormatError(path, "JPEG: \(message)") }
        func u16(_ o: Int) -> Int { Int(b[o]) << 8 | Int(b[o + 1]) }
        let n = b.count
        guard n >= 4, b[0] == 0xFF, b[1] == 0xD8 else { throw fail("missing SOI marker") }

        var pos = 2
        var sawSOF = false
        var quantDefined = [Bool](repeating: false, count: 4)
        var latched: Set<UInt8> = []
        // Huffman slots 0 and 1 start with the standard tables (libjpeg-turbo installs them for
        // Motion-JPEG frames), so referencing them undefined is legal.
        var dcTables: [[UInt8]?] = [Self.standardDCSymbols, Self.standardDCSymbols, nil, nil]
        var acDefined = [true, true, false, false]
        var scans = 0
        var singleScanComplete = false
        var exifOrientation: Orientation?
        var xmpOrientation: Orientation?

        while true {
            // libjpeg skips garbage before a marker (a warning) and any run of 0xFF fill bytes.
            while pos < n && b[pos] != 0xFF { pos += 1 }
            while pos < n && b[pos] == 0xFF { pos += 1 }
            guard pos < n else { throw fail("truncated: no EOI marker") }
            let marker = b[pos]
            pos += 1

            switch marker {
            case 0xD9: // EOI
                guard scans > 0 else { throw fail("no image data (EOI before any scan)") }
                orientation = exifOrientation ?? xmpOrientation ?? .normal
                return
            case 0xD0...0xD7, 0x01: // RSTn, TEM: no payload
                continue
            case 0xD8:
                throw fail("duplicate SOI marker")
            default:
                break
            }

            // Every other known marker carries a length that includes its own two bytes.
            guard pos + 2 <= n else { throw fail("truncated in marker 0x\(hex(marker))") }
            let length = u16(pos)
            guard length >= 2 else { throw fail("marker 0x\(hex(marker)) has bad length \(length)") }
            guard pos + length <= n else { throw fail("truncated in marker 0x\(hex(marker)) segment") }
            let body = pos + 2, end = pos + length
            let bodyCount = length - 2
            pos = end

            switch marker {
            case 0xC0, 0xC1, 0xC2: // SOF: baseline, extended, progressive (Huffman)
                guard !sawSOF else { throw fail("duplicate SOF marker") }
                sawSOF = true
                progressive = marker == 0xC2
                guard bodyCount >= 6 else { throw fail("SOF segment too short") }
                guard b[body] == 8 else { throw fail("\(b[body])-bit samples are not supported") }
                height = u16(body + 1)
                width = u16(body + 3)
                let count = Int(b[body + 5])
                guard width > 0, height > 0 else {
                    throw fail("image size \(width)x\(height) is empty (DNL-defined height is not supported)")
                }
                guard count == 1 || count == 3 || count == 4 else { throw fail("\(count) components are not supported") }
                guard bodyCount == 6 + 3 * count else { throw fail("SOF length does not match \(count) components") }
                guard width <= 65500, height <= 65500 else { throw fail("image size \(width)x\(height) exceeds 65500") }
                guard width * height <= maxPixels else {
                    throw fail("image size \(width)x\(height) exceeds the limit of \(maxPixels) pixels")
                }
                for c in 0..<count {
                    let o = body + 6 + 3 * c
                    let comp = Component(id: b[o], h: Int(b[o + 1] >> 4), v: Int(b[o + 1] & 15), quantTable: Int(b[o + 2]))
                    guard (1...4).contains(comp.h), (1...4).contains(comp.v) else {
                        throw fail("bad sampling factors \(comp.h)x\(comp.v)")
                    }
                    guard comp.quantTable < 4 else { throw fail("bad quantization table index \(comp.quantTable)") }
                    guard !components.contains(where: { $0.id == comp.id }) else { throw fail("duplicate component id \(comp.id)") }
                    components.append(comp)
                }

            case 0xC3, 0xC5...0xC7, 0xC9...0xCB, 0xCD...0xCF:
                throw fail("unsupported coding process (SOF 0x\(hex(marker)): lossless, hierarchical or arithmetic)")

            case 0xC4: // DHT
                var o = body
                while o < end {
                    guard o + 17 <= end else { throw fail("bad DHT segment length") }
                    let index = Int(b[o])
                    let isAC = index & 0x10 != 0
                    let slot = index & ~0x10
                    guard slot < 4 else { throw fail("bad Huffman table index \(index)") }
                    var counts = [Int](repeating: 0, count: 17)
                    var total = 0
                    for l in 1...16 { counts[l] = Int(b[o + l]); total += counts[l] }
                    guard total <= 256, o + 17 + total <= end else { throw fail("bad Huffman table") }
                    // libjpeg rejects code lengths that overflow (or fill, leaving no all-ones code)
                    // a bit length when it builds the decoding table.
                    var code = 0
                    for l in 1...16 {
                        code += counts[l]
                        guard code < 1 << l || total == 0 else { throw fail("bad Huffman table (over-subscribed)") }
                        code <<= 1
                    }
                    let symbols = (0..<total).map { b[o + 17 + $0] }
                    if isAC { acDefined[slot] = true } else { dcTables[slot] = symbols }
                    o += 17 + total
                }

            case 0xDB: // DQT
                var o = body
                while o < end {
                    let precision = Int(b[o] >> 4), slot = Int(b[o] & 15)
                    guard slot < 4 else { throw fail("bad quantization table index \(slot)") }
                    guard precision <= 1 else { throw fail("bad quantization table precision") }
                    let size = 1 + 64 * (precision + 1)
                    guard o + size <= end else { throw fail("bad DQT segment length") }
                    quantDefined[slot] = true
                    o += size
                }

            case 0xDD: // DRI
                guard bodyCount == 2 else { throw fail("bad DRI segment length") }

            case 0xDC, 0xE0...0xEF, 0xFE: // DNL, APPn, COM: skipped by libjpeg
                let segment = UnsafeRawBufferPointer(rebasing: b[body..<end])
                if marker == 0xE1, exifOrientation == nil, Self.hasPrefix(segment, "Exif\0\0") {
                    exifOrientation = Orientation.fromTIFF(UnsafeRawBufferPointer(rebasing: segment[6...]))
                } else if marker == 0xE1, xmpOrientation == nil, Self.hasPrefix(segment, "http://ns.adobe.com/xap/1.0/\0") {
                    xmpOrientation = Orientation.fromXMP(segment)
                }

            case 0xDA: // SOS
                guard sawSOF else { throw fail("scan before SOF") }
                guard !singleScanComplete else { throw fail("unexpected second scan in a single-scan image") }
                guard bodyCount >= 1 else { throw fail("SOS segment too short") }
                let count = Int(b[body])
                guard count >= 1, count <= 4, bodyCount == 4 + 2 * count else { throw fail("bad SOS segment") }
                var scanComponents: [Component] = []
                var tables: [(dc: Int, ac: Int)] = []
                for c in 0..<count {
                    let id = b[body + 1 + 2 * c]
                    guard let comp = components.first(where: { $0.id == id }), !scanComponents.contains(where: { $0.id == id }) else {
                        throw fail("scan names unknown or repeated component \(id)")
                    }
                    scanComponents.append(comp)
                    tables.append((Int(b[body + 2 + 2 * c] >> 4), Int(b[body + 2 + 2 * c] & 15)))
                }
                let p = body + 1 + 2 * count
                let ss = Int(b[p]), se = Int(b[p + 1]), ah = Int(b[p + 2] >> 4), al = Int(b[p + 2] & 15)
                if count > 1 {
                    guard scanComponents.reduce(0, { $0 + $1.h * $1.v }) <= 10 else { throw fail("too many blocks in MCU") }
                }
                for comp in scanComponents where !latched.contains(comp.id) {
                    guard quantDefined[comp.quantTable] else { throw fail("quantization table \(comp.quantTable) is not defined") }
                    latched.insert(comp.id)
                }
                // The Huffman tables libjpeg builds at the start of this scan.
                let isDCBand = ss == 0
                if progressive {
                    var bad = false
                    if isDCBand { bad = se != 0 } else { bad = ss > se || se >= 64 || count != 1 }
                    if ah != 0 && al != ah - 1 { bad = true }
                    if al > 13 { bad = true }
                    guard !bad else { throw fail("bad progression parameters Ss=\(ss) Se=\(se) Ah=\(ah) Al=\(al)") }
                }
                let needsDC = progressive ? (isDCBand && ah == 0) : true
                let needsAC = progressive ? !isDCBand : true
                for t in tables {
                    if needsDC {
                        guard t.dc < 4, let symbols = dcTables[t.dc] else { throw fail("Huffman DC table \(t.dc) is not defined") }
                        guard symbols.allSatisfy({ $0 <= 15 }) else { throw fail("bad Huffman DC table \(t.dc)") }
                    }
                    if needsAC { guard t.ac < 4, acDefined[t.ac] else { throw fail("Huffman AC table \(t.ac) is not defined") } }
                }
                scans += 1
                // A sequential scan holding every component is the whole image: libjpeg then
                // treats another SOS as an error.
                if !progressive && scans == 1 && count == components.count { singleScanComplete = true }
                // Entropy-coded data runs to the first marker that is not a stuffed 0x00 or RSTn.
                while pos + 1 < n {
                    if b[pos] == 0xFF, b[pos + 1] != 0x00, !(0xD0...0xD7).contains(b[pos + 1]), b[pos + 1] != 0xFF {
                        break
                    }
                    pos += 1
                }
                guard pos + 1 < n else { throw fail("truncated in scan data") }

            default:
                throw fail("unknown marker 0x\(hex(marker))")
            }
        }
    }

    static func hasPrefix(_ b: UnsafeRawBufferPointer, _ prefix: String) -> Bool {
        let p = Array(prefix.utf8)
        return b.count >= p.count && (0..<p.count).allSatisfy { b[$0] == p[$0] }
    }

    /// Symbols of the standard luminance DC table (all <= 15).
    static let standardDCSymbols: [UInt8] = Array(0...11)
}

func hex(_ v: UInt8) -> String {
    let s = String(v, radix: 16, uppercase: true)
    return s.count == 1 ? "0" + s : s
}
