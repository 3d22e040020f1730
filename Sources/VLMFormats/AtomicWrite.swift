import Foundation

/// Writes `data` to `path` through Foundation's `.atomic` option (a temporary file renamed into
/// place), so `path` holds the old content or the new, never a partial file. Any failure is one
/// FormatError naming `path`.
public func writeAtomically(_ data: Data, to path: String) throws {
    do {
        try data.write(to: URL(fileURLWithPath: path), options: .atomic)
    } catch {
        throw FormatError(path, "cannot write: \(reason(error))")
    }
}

/// The POSIX reason under a Foundation file error ("No such file or directory"), which names the
/// problem better than the generic Cocoa wording.
private func reason(_ error: any Error) -> String {
    if let underlying = (error as NSError).userInfo[NSUnderlyingErrorKey] as? any Error {
        let posix = underlying as NSError
        if posix.domain == NSPOSIXErrorDomain { return String(cString: strerror(Int32(posix.code))) }
    }
    return error.localizedDescription
}
