import Foundation

/// The loss curve of a run as a small standalone SVG (written to the run's out folder): training
/// loss per step, evaluation loss as dots when there is any.
public enum LossCurve {
    public static func svg(steps: [(step: Int, loss: Double)], evaluations: [(step: Int, loss: Double)] = [],
                           title: String, width: Double = 640, height: Double = 320) -> String {
        let all = steps.map(\.loss) + evaluations.map(\.loss)
        let finite = all.filter(\.isFinite)
        let lo = finite.min() ?? 0, hi = max(finite.max() ?? 1, lo + 1e-9)
        let lastStep = max((steps.map(\.step) + evaluations.map(\.step)).max() ?? 1, 1)
        let left = 56.0, right = 16.0, top = 28.0, bottom = 36.0
        let plotW = width - left - right, plotH = height - top - bottom
        func x(_ s: Int) -> Double { left + plotW * Double(s) / Double(lastStep) }
        func y(_ l: Double) -> Double { top + plotH * (1 - (l - lo) / (hi - lo)) }
        func f(_ v: Double) -> String { String(format: "%.1f", v) }
        var out = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" font-family=\"sans-serif\" font-size=\"12\">\n"
        out += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        out += "<text x=\"\(f(left))\" y=\"18\">\(escape(title))</text>\n"
        out += "<line x1=\"\(f(left))\" y1=\"\(f(top + plotH))\" x2=\"\(f(left + plotW))\" y2=\"\(f(top + plotH))\" stroke=\"#888\"/>\n"
        out += "<line x1=\"\(f(left))\" y1=\"\(f(top))\" x2=\"\(f(left))\" y2=\"\(f(top + plotH))\" stroke=\"#888\"/>\n"
        for k in 0...4 {
            let v = lo + (hi - lo) * Double(k) / 4
            out += "<text x=\"4\" y=\"\(f(y(v) + 4))\">\(String(format: "%.3g", v))</text>\n"
        }
        out += "<text x=\"\(f(left + plotW - 60))\" y=\"\(f(height - 8))\">step \(lastStep)</text>\n"
        let points = steps.filter { $0.loss.isFinite }.map { "\(f(x($0.step))),\(f(y($0.loss)))" }.joined(separator: " ")
        out += "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"\(points)\"/>\n"
        for e in evaluations where e.loss.isFinite {
            out += "<circle cx=\"\(f(x(e.step)))\" cy=\"\(f(y(e.loss)))\" r=\"3\" fill=\"#d62728\"/>\n"
        }
        if !evaluations.isEmpty { out += "<text x=\"\(f(left + plotW - 160))\" y=\"18\" fill=\"#d62728\">● evaluation loss</text>\n" }
        return out + "</svg>\n"
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}
