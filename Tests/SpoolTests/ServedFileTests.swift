import Foundation
import Testing

@testable import Spool

@Suite struct ServedFileTests {
    let directory: String

    init() throws {
        directory = NSTemporaryDirectory() + "walship-served-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    func cleanUp() { try? FileManager.default.removeItem(atPath: directory) }

    func allocatedBytes(_ path: String) -> Int {
        var status = stat()
        return stat(path, &status) == 0 ? Int(status.st_blocks) * 512 : -1
    }

    /// The padded tail of a segment reads back as zeros, but is a hole: writing it costs no disk blocks.
    @Test func theZeroTailIsAHole() throws {
        defer { cleanUp() }
        let wal = (0..<70_000).map { UInt8(truncatingIfNeeded: $0 * 31 + 7) }
        let file = ServedFile(bytes: wal, size: 16 << 20)
        let path = directory + "/000000010000000000000002"
        try file.write(to: path)
        let back = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        #expect(back == file.contents)
        #expect(back.count == 16 << 20)
        #expect(allocatedBytes(path) < 1 << 20, "\(allocatedBytes(path)) bytes allocated")
        // Written again over a longer file (created or truncated), it is exactly the new content.
        let whole = ServedFile(whole: [1, 2, 3])
        try whole.write(to: path)
        #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: path))) == [1, 2, 3])
    }

    @Test func exclusiveWritesRefuseAnExistingFile() throws {
        defer { cleanUp() }
        let path = directory + "/aside"
        try ServedFile(whole: [9]).write(to: path, exclusive: true)
        let error = #expect(throws: SpoolError.self) { try ServedFile(whole: [8]).write(to: path, exclusive: true) }
        #expect(error.map { "\($0)".contains(path) && "\($0)".contains("exists") } == true, "\(String(describing: error))")
        #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: path))) == [9])
        let missing = directory + "/no/such/dir/file"
        #expect(throws: SpoolError.self) { try ServedFile(whole: [8]).write(to: missing) }
    }

    /// pg_wal already holds the WAL when its copy has the segment's size and begins with it; whatever follows
    /// (zeros, or WAL a standby streamed beyond the spool's) does not matter.
    @Test func heldMeansSameSizeAndSamePrefix() throws {
        defer { cleanUp() }
        let size = 64 << 10
        let wal = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        let file = ServedFile(bytes: wal, size: size)
        let path = directory + "/segment"
        #expect(!file.isHeld(by: path))  // missing
        try file.write(to: path)
        #expect(file.isHeld(by: path))
        // More WAL after it (streamed, or restored at a later retry): still held.
        try ServedFile(bytes: wal + [1, 2, 3, 4], size: size).write(to: path)
        #expect(file.isHeld(by: path))
        // Less of it (an earlier retry's copy): the spool has something new.
        try ServedFile(bytes: Array(wal.prefix(9_000)), size: size).write(to: path)
        #expect(!file.isHeld(by: path))
        // Different bytes (a recycled segment file, another segment's content).
        var other = wal
        other[5_000] ^= 0xFF
        try ServedFile(bytes: other, size: size).write(to: path)
        #expect(!file.isHeld(by: path))
        // Another size.
        try ServedFile(bytes: wal, size: size / 2).write(to: path)
        #expect(!file.isHeld(by: path))
        // A whole segment against an identical copy.
        let whole = ServedFile(whole: (0..<size).map { UInt8(truncatingIfNeeded: $0) })
        try whole.write(to: path)
        #expect(whole.isHeld(by: path))
    }
}
