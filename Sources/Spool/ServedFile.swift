#if canImport(Glibc)
import Glibc
#endif

/// A file as PostgreSQL gets it from the spool: `bytes`, then zeros up to `size`. Only the in-progress segment
/// has such a tail (its WAL ends early); a completed segment or a history file is all `bytes`.
public struct ServedFile: Sendable, Equatable {
    public var bytes: [UInt8]
    public var size: Int

    public init(bytes: [UInt8], size: Int) {
        precondition(bytes.count <= size, "a served file's bytes cannot exceed its size")
        self.bytes = bytes
        self.size = size
    }

    public init(whole bytes: [UInt8]) { self.init(bytes: bytes, size: bytes.count) }

    /// Whether zeros follow the bytes.
    public var isPadded: Bool { bytes.count < size }

    /// The whole file in memory, zeros included.
    public var contents: [UInt8] { bytes + [UInt8](repeating: 0, count: size - bytes.count) }

    /// Writes the file at `path`: a new file when `exclusive`, else created or truncated. (Not through `FileIO`,
    /// whose errors give hints about the spool: this file goes to PostgreSQL's pg_wal or a DBA's directory.)
    /// The zeros after the bytes are left as a hole (read back as zeros, as PostgreSQL does with the segments it creates itself when
    /// `wal_init_zero` is off): a standby that falls back to restore_command fetches the in-progress segment again
    /// at every retry, and the zeros would otherwise be 16 MiB of disk writes each time. `mode` is narrowed by
    /// the umask, which for restore_command is the postmaster's (PostgreSQL's own file modes).
    public func write(to path: String, exclusive: Bool = false, mode: mode_t = 0o666) throws {
        let flags = O_WRONLY | O_CREAT | (exclusive ? O_EXCL : O_TRUNC)
        let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
        guard fd >= 0 else { throw Self.error("create", path) }
        defer { Glibc.close(fd) }
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress! + written, $0.count - written, off_t(written)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw n == 0 ? Self.error("write", path, code: ENOSPC) : Self.error("write", path) }
            written += n
        }
        guard ftruncate(fd, off_t(size)) == 0 else { throw Self.error("extend", path) }
    }

    /// Whether the file at `path` already holds this WAL: `size` bytes long and beginning with `bytes`, whatever
    /// follows them (more WAL that a standby streamed, or zeros). False when it is missing or unreadable.
    public func isHeld(by path: String) -> Bool {
        guard let fd = try? FileIO.open(path, O_RDONLY) else { return false }
        defer { FileIO.close(fd) }
        guard (try? FileIO.fileSize(fd, path: path)) == size else { return false }
        return (try? FileIO.preadAll(fd, count: bytes.count, at: 0, path: path)) == bytes
    }

    private static func error(_ what: String, _ path: String, code: Int32 = errno) -> SpoolError {
        SpoolError(
            code == ENOSPC || code == EDQUOT ? .diskFull : .io,
            "could not \(what) \"\(path)\": \(String(cString: strerror(code)))")
    }
}
