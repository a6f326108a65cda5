import Logging
import Synchronization
import WALCore

#if canImport(Glibc)
import Glibc
#endif

/// The receiver's spool directory: one subdirectory per source system, and a lock so that only one
/// `walship receive` writes to it.
public final class Spool: Sendable {
    public let root: String
    private let lockFD: Int32
    private let logger: Logger
    private let systems = Mutex<[UInt64: SystemSpool]>([:])
    private let refusals = Mutex<[UInt64: SpoolError]>([:])
    /// Most bytes the spool may take (`--spool-max-bytes`): for a spool sharing a filesystem with other data.
    public let quota: UInt64?
    /// The file system the spool's files are on (the real one but in tests).
    public let io: FileIO
    /// The last walk of the tree (`diskUsage()`), for status between walks.
    let measuredUsage = Mutex<UInt64?>(nil)

    public init(root: String, quota: UInt64? = nil, logger: Logger, fileSystem: any FileSystem = PosixFileSystem()) throws {
        let io = FileIO(fileSystem)
        self.io = io
        self.root = root
        self.quota = quota
        self.logger = logger
        if !io.isDirectory(root) {
            do { try io.makeDirectory(root) } catch let error as SpoolError {
                // FileIO's message already carries a hint for permission problems.
                throw error.message.contains("(hint:")
                    ? error
                    : SpoolError(.io, "\(error) (hint: create the spool directory, owned by the user walship runs as)")
            }
        }
        guard io.fs.isWritable(root) else {
            throw SpoolError(
                .io,
                "spool directory \"\(root)\" is not writable by this user (hint: chown it to the user running walship receive)")
        }
        let lockPath = Self.lockPath(root)
        do {
            lockFD = try io.fs.lockExclusively(lockPath)
        } catch {
            guard error.code == EWOULDBLOCK else { throw SpoolError.errno("lock", lockPath, error.code) }
            throw SpoolError(
                .locked,
                "spool \"\(root)\" is in use by another walship receive (hint: stop it, or give this one its own --spool)")
        }
    }

    deinit { io.close(lockFD) }

    /// The file whose exclusive lock the receiver holds while it runs (and `walship prune` while it prunes).
    public static func lockPath(_ root: String) -> String { root + "/.walship.lock" }

    /// Opens (recovering) or creates the spool of one source system.
    public func system(_ systemIdentifier: UInt64, segmentSize: WALSegmentSize) throws -> SystemSpool {
        var reserve: (@Sendable (UInt64) throws -> Void)?
        if quota != nil {
            reserve = { [weak self] bytes in try self?.reserveSpace(bytes) }
        }
        return try systems.withLock { systems in
            if let existing = systems[systemIdentifier] {
                guard existing.segmentSize == segmentSize else {
                    throw SpoolError(
                        .mismatch,
                        "system \(systemIdentifier) uses \(existing.segmentSize) segments in this spool, the sender says \(segmentSize)"
                    )
                }
                return existing
            }
            let opened: SystemSpool
            do {
                opened = try SystemSpool(
                    root: root, systemIdentifier: systemIdentifier, segmentSize: segmentSize, logger: logger,
                    io: io.latched(), reserve: reserve)
            } catch let error as SpoolError where error.kind == .acknowledgedWALMissing {
                refusals.withLock { $0[systemIdentifier] = error }
                throw error
            }
            refusals.withLock { _ = $0.removeValue(forKey: systemIdentifier) }
            systems[systemIdentifier] = opened
            return opened
        }
    }

    /// The source systems a spool directory holds (subdirectories named by identifier, with a system.conf).
    public static func systemIdentifiers(root: String, io: FileIO = .posix) throws -> [UInt64] {
        try io.listDirectory(root).compactMap(UInt64.init)
            .filter { io.exists(root + "/\($0)/system.conf") }.sorted()
    }

    /// Opens (and so recovers) every system already in the spool; returns them. A system whose spool lacks WAL
    /// it acknowledged is not opened (see `refusedSystems`); the others are.
    @discardableResult
    public func openExistingSystems() throws -> [SystemSpool] {
        try Self.systemIdentifiers(root: root, io: io).compactMap { id in
            do {
                return try system(id, segmentSize: SystemConfiguration.read(directory: root + "/\(id)", io: io).segmentSize)
            } catch let error as SpoolError where error.kind == .acknowledgedWALMissing {
                logger.critical(
                    "a system's spool lacks WAL it acknowledged; that system is not started",
                    metadata: [
                        "walship.system": "\(id)", "walship.error": "\(error)",
                    ])
                return nil
            }
        }
    }

    /// Systems this process refused to open, and why: their spool lacks WAL they acknowledged.
    public var refusedSystems: [UInt64: SpoolError] { refusals.withLock { $0 } }

    /// Forgets a system and deletes its WAL and files. Only for spools whose content is a copy held
    /// elsewhere too (the sender's local buffer once the DR site has it all); never for the receiver's spool.
    public func removeSystem(_ systemIdentifier: UInt64) throws {
        try systems.withLock { systems in
            systems.removeValue(forKey: systemIdentifier)
            let directory = root + "/\(systemIdentifier)"
            guard io.isDirectory(directory) else { return }
            for name in try io.listDirectory(directory) where io.isDirectory(directory + "/" + name) {
                try io.removeDirectory(directory + "/" + name)
            }
            try io.removeDirectory(directory)
            try io.syncDirectory(root)
        }
    }

    /// Forgets a system and renames its directory to `name`, which must not parse as a system identifier: its
    /// files stay for a person to look at, and this spool no longer sees them.
    public func setSystemAside(_ systemIdentifier: UInt64, as name: String) throws {
        precondition(UInt64(name) == nil, "a name set aside must not look like a system identifier")
        try systems.withLock { systems in
            systems.removeValue(forKey: systemIdentifier)
            let directory = root + "/\(systemIdentifier)"
            guard io.isDirectory(directory) else { return }
            try io.rename(directory, to: root + "/" + name)
            try io.syncDirectory(root)
        }
    }

    /// Opens a system anew from its files, dropping the object this process had: the one way back after a
    /// failed fsync stopped it (its files are re-read and re-validated; see `SyncFailureLatch`). The old
    /// object must no longer be used.
    @discardableResult
    public func reopen(_ systemIdentifier: UInt64) throws -> SystemSpool? {
        let segmentSize = try systems.withLock { systems -> WALSegmentSize? in
            guard let old = systems.removeValue(forKey: systemIdentifier) else { return nil }
            old.close()
            return old.segmentSize
        }
        guard let segmentSize else { return nil }
        return try system(systemIdentifier, segmentSize: segmentSize)
    }

    /// Appends a line to the file `name` in the spool's directory and makes it durable, its directory entry
    /// too when the file is new (an audit log).
    public func appendDurably(_ line: [UInt8], toFileNamed name: String) throws {
        try io.appendDurably(line, to: root + "/" + name)
    }

    /// Systems already opened in this process.
    public var openSystems: [SystemSpool] { systems.withLock { Array($0.values) } }

    /// Free and total bytes for the spool: its filesystem's, or within the quota when there is one.
    public var capacity: (free: UInt64, total: UInt64)? {
        guard let filesystem = io.capacity(of: root) else { return nil }
        guard let quota else { return filesystem }
        let used = measuredUsage.withLock { $0 } ?? diskUsage()
        return (min(filesystem.free, quota - min(used, quota)), min(filesystem.total, quota))
    }

    /// Before a new segment: refuses, like a full disk, when the journal and its compressed copy (both exist
    /// while it is completed) would not fit in the quota. Checking once per segment keeps the walk rare.
    func reserveSpace(_ segmentBytes: UInt64) throws {
        guard let quota else { return }
        let used = diskUsage()
        guard used + 2 * segmentBytes <= quota else {
            throw SpoolError(
                .diskFull,
                "the spool has reached its quota: \(used) bytes used of --spool-max-bytes \(quota), and a new segment needs \(2 * segmentBytes) (hint: raise --spool-max-bytes, lower --keep-backups or check that the DR standby replays so old WAL can be pruned; walship resumes by itself once there is room)"
            )
        }
    }
}
