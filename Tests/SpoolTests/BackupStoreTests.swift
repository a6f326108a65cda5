import Foundation
import LZ4Codec
import Testing
import WALCore

@testable import Spool

@Suite struct BackupStoreTests {
    @Test func finishedBackupIsVisibleWithItsRecordAndRestorableArchive() throws {
        let temp = TempSpool()
        let (_, system) = try temp.open()
        let writer = try BackupWriter(
            system: system, label: "unit", startLSN: LSN("0/2000028")!, now: Date(timeIntervalSince1970: 1_795_000_000))
        let archive = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 % 97) }
        try archive.withUnsafeBytes { try writer.appendArchive(UnsafeRawBufferPointer(rebasing: $0[0..<100_000])) }
        try archive.withUnsafeBytes { try writer.appendArchive(UnsafeRawBufferPointer(rebasing: $0[100_000...])) }
        let manifest = Array("{\"PostgreSQL-Backup-Manifest-Version\": 1}\n".utf8)
        try manifest.withUnsafeBytes { try writer.appendManifest($0) }
        // Not visible before it is finished.
        #expect(try BackupCatalog.list(systemDirectory: system.directory).isEmpty)
        let info = try writer.finish(stopLSN: LSN("0/2000100")!, timeline: 1, durable: LSN("0/2000000")!)
        #expect(info.status == .waitingForWAL)
        #expect(info.archiveBytes == 300_000)
        #expect(info.archiveCRC32C == String(CRC32C.checksum(archive), radix: 16))
        #expect(try BackupCatalog.list(systemDirectory: system.directory) == [info])
        let directory = system.directory + "/base/" + info.id
        let frame = try Data(contentsOf: URL(fileURLWithPath: directory + "/base.tar.lz4"))
        #expect(try Array(frame).withUnsafeBytes { try LZ4.decompressFrame($0, maxOutputBytes: 1 << 20) } == archive)
        #expect(try Data(contentsOf: URL(fileURLWithPath: directory + "/backup_manifest")) == Data(manifest))
        let complete = try BackupCatalog.markComplete(systemDirectory: system.directory, id: info.id)
        #expect(complete.status == .complete)
        #expect(try BackupCatalog.list(systemDirectory: system.directory).first?.status == .complete)
    }

    @Test func interruptedBackupLeavesNothingThatLooksLikeABackup() throws {
        let temp = TempSpool()
        do {
            let (_, system) = try temp.open()
            let writer = try BackupWriter(system: system, label: "unit", startLSN: LSN("0/2000028")!)
            try [UInt8](repeating: 1, count: 1000).withUnsafeBytes { try writer.appendArchive($0) }
            #expect(FileManager.default.fileExists(atPath: system.directory + "/base/\(writer.id).partial"))
            // The link dies here: the writer is dropped without finishing.
        }
        let (_, system) = try temp.open()
        #expect(try BackupCatalog.list(systemDirectory: system.directory).isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: system.directory + "/base").isEmpty)
    }

    @Test func crashLeftoversAreRemovedOnStart() throws {
        let temp = TempSpool()
        do {
            let (_, system) = try temp.open()
            try FileManager.default.createDirectory(
                atPath: system.directory + "/base/20260101T000000Z.partial", withIntermediateDirectories: true)
            #expect(
                FileManager.default.createFile(
                    atPath: system.directory + "/base/20260101T000000Z.partial/base.tar.lz4", contents: Data([1])))
        }
        let (_, system) = try temp.open()
        #expect(try FileManager.default.contentsOfDirectory(atPath: system.directory + "/base").isEmpty)
    }

    @Test func damagedRecordIsAnError() throws {
        let temp = TempSpool()
        let (_, system) = try temp.open()
        try FileManager.default.createDirectory(atPath: system.directory + "/base/x", withIntermediateDirectories: true)
        #expect(
            FileManager.default.createFile(atPath: system.directory + "/base/x/backup.json", contents: Data("{not json".utf8)))
        #expect(throws: SpoolError.self) { try BackupCatalog.list(systemDirectory: system.directory) }
    }
}
