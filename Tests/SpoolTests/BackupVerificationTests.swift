import Foundation
import LZ4Codec
import Testing
import WALCore

@testable import Spool

@Suite struct BackupVerificationTests {
    /// A stored backup whose archive is incompressible, so its LZ4 frame holds the content as it is and one
    /// flipped byte there changes the content rather than the frame's structure.
    func storedBackup(in temp: TempSpool) throws -> (systemDirectory: String, info: BackupInfo) {
        let (_, system) = try temp.open()
        let writer = try BackupWriter(system: system, label: "unit", startLSN: LSN("0/2000028")!)
        // xorshift64: incompressible enough for LZ4, and quick in a debug build.
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        var archive = [UInt8](repeating: 0, count: 2_500_000)
        archive.withUnsafeMutableBytes { raw in
            for offset in stride(from: 0, to: raw.count, by: 8) {
                state ^= state << 13
                state ^= state >> 7
                state ^= state << 17
                raw.storeBytes(of: state, toByteOffset: offset, as: UInt64.self)
            }
        }
        try archive.withUnsafeBytes { try writer.appendArchive($0) }
        try Array("{}\n".utf8).withUnsafeBytes { try writer.appendManifest($0) }
        let info = try writer.finish(stopLSN: LSN("0/2000100")!, timeline: 1, durable: LSN("0/2000100")!)
        return (system.directory, info)
    }

    @Test func anIntactBackupPasses() throws {
        let temp = TempSpool()
        let (directory, info) = try storedBackup(in: temp)
        try BackupVerification.verify(info, systemDirectory: directory)
    }

    @Test func oneFlippedByteInTheArchiveIsFoundAndNamed() throws {
        let temp = TempSpool()
        let (directory, info) = try storedBackup(in: temp)
        let path = directory + "/base/" + info.id + "/base.tar.lz4"
        var stored = try Data(contentsOf: URL(fileURLWithPath: path))
        stored[stored.count / 2] ^= 0x20
        try stored.write(to: URL(fileURLWithPath: path))
        let error = try #require(throws: SpoolError.self) { try BackupVerification.verify(info, systemDirectory: directory) }
        #expect(error.kind == .corrupt)
        #expect(error.message.contains("backup \(info.id) is damaged: \(path) "), "\(error.message)")
        #expect(error.message.contains("expected CRC-32C \(info.archiveCRC32C) over 2500000 bytes"), "\(error.message)")
        let computed = try #require(error.message.firstMatch(of: /holds an archive with CRC-32C ([0-9a-f]+) over 2500000 bytes/))
        #expect(computed.1 != info.archiveCRC32C, "\(error.message)")
    }

    @Test func anArchiveThatDisagreesWithItsRecordIsFoundWithBothChecksums() throws {
        let temp = TempSpool()
        let (directory, stored) = try storedBackup(in: temp)
        var info = stored
        let recorded = UInt32(info.archiveCRC32C, radix: 16)!
        info.archiveCRC32C = String(recorded ^ 1, radix: 16)
        let error = try #require(throws: SpoolError.self) { try BackupVerification.verify(info, systemDirectory: directory) }
        #expect(
            error.message.contains(
                "holds an archive with CRC-32C \(stored.archiveCRC32C) over 2500000 bytes; expected CRC-32C \(info.archiveCRC32C)"
            ),
            "\(error.message)")
    }

    @Test func aTruncatedArchiveIsFound() throws {
        let temp = TempSpool()
        let (directory, info) = try storedBackup(in: temp)
        let path = directory + "/base/" + info.id + "/base.tar.lz4"
        let stored = try Data(contentsOf: URL(fileURLWithPath: path))
        try stored.prefix(stored.count - 100).write(to: URL(fileURLWithPath: path))
        let error = try #require(throws: SpoolError.self) { try BackupVerification.verify(info, systemDirectory: directory) }
        #expect(error.message.contains("\(path) ends inside its LZ4 frame"), "\(error.message)")
    }
}
