import Foundation
import NIOSSL
import Testing
import X509

@testable import ShipTLS

@Suite struct CertificateAuthorityTests {
    func temporaryDirectory() -> String {
        NSTemporaryDirectory() + "walship-certs-\(UUID().uuidString)"
    }

    @Test func createsAMatchingPrivateSet() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let created = try CertificateAuthority.create(
            in: directory, receiverNames: ["dr.example", "127.0.0.1"],
            senderName: "primary-sidecar", validDays: 30)
        #expect(created.files.count == 6)
        for path in created.files {
            let mode = (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)?.intValue
            #expect(mode == 0o600, "\(path)")
        }
        // Both ends' contexts load: each key fits its certificate.
        _ = try TLSFiles(
            certificate: directory + "/receiver.crt", privateKey: directory + "/receiver.key",
            authority: directory + "/ca.crt"
        ).serverContext()
        _ = try TLSFiles(
            certificate: directory + "/sender.crt", privateKey: directory + "/sender.key",
            authority: directory + "/ca.crt"
        ).clientContext()
        let receiver = try NIOSSLCertificate.fromPEMFile(directory + "/receiver.crt")[0]
        let sender = try NIOSSLCertificate.fromPEMFile(directory + "/sender.crt")[0]
        #expect(certificateName(receiver) == "dr.example")
        #expect(certificateName(sender) == "primary-sidecar")
        let parsed = try Certificate(derEncoded: try receiver.toDERBytes())
        let names = try #require(try parsed.extensions.subjectAlternativeNames)
        #expect(names.contains(.dnsName("dr.example")))
        #expect(names.contains { if case .ipAddress = $0 { true } else { false } })
        #expect(parsed.notValidAfter.timeIntervalSinceNow > 29 * 86400)
    }

    /// Without --receiver-name the certificate names only this host's loopback, and certs init says so, with the fix.
    @Test func withoutReceiverNamesTheCertificateNamesOnlyTheLoopbackAndSaysSo() throws {
        let defaulted = ReceiverNames(given: [])
        #expect(defaulted.names == ["localhost", "127.0.0.1"])
        let warning = try #require(defaulted.warning)
        #expect(!warning.contains("\n"), "one line on standard error")
        for part in ["names only localhost and 127.0.0.1", "hint: pass --receiver-name HOST"] {
            #expect(warning.contains(part), "\(warning)")
        }
        #expect(defaulted.summary.hasPrefix("localhost, 127.0.0.1 (loopback only:"))
        #expect(defaulted.summary.contains("--receiver-name HOST"))

        // What the warning claims is what the certificate holds: no other name.
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try CertificateAuthority.create(in: directory, receiverNames: defaulted.names, senderName: "b", validDays: 1)
        let receiver = try Certificate(
            derEncoded: try NIOSSLCertificate.fromPEMFile(directory + "/receiver.crt")[0].toDERBytes())
        let names = try #require(try receiver.extensions.subjectAlternativeNames)
        #expect(Array(names) == [.dnsName("localhost"), CertificateAuthority.generalName("127.0.0.1")])

        let given = ReceiverNames(given: ["dr.example", "10.20.0.5"])
        #expect(given.names == ["dr.example", "10.20.0.5"])
        #expect(given.warning == nil)
        #expect(given.summary == "dr.example, 10.20.0.5")
    }

    @Test func neverOverwritesKeys() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try CertificateAuthority.create(in: directory, receiverNames: ["a"], senderName: "b", validDays: 1)
        #expect(throws: TLSSetupError.self) {
            _ = try CertificateAuthority.create(in: directory, receiverNames: ["a"], senderName: "b", validDays: 1)
        }
    }

    @Test func mismatchedOrMissingFilesAreClearErrors() throws {
        let one = temporaryDirectory(), two = temporaryDirectory()
        defer {
            try? FileManager.default.removeItem(atPath: one)
            try? FileManager.default.removeItem(atPath: two)
        }
        _ = try CertificateAuthority.create(in: one, receiverNames: ["a"], senderName: "b", validDays: 1)
        _ = try CertificateAuthority.create(in: two, receiverNames: ["a"], senderName: "b", validDays: 1)
        let mismatched = TLSFiles(
            certificate: one + "/receiver.crt", privateKey: two + "/receiver.key", authority: one + "/ca.crt")
        #expect(throws: TLSSetupError.self) { _ = try mismatched.serverContext() }
        let missing = TLSFiles(certificate: one + "/nope.crt", privateKey: one + "/receiver.key", authority: one + "/ca.crt")
        let error = #expect(throws: TLSSetupError.self) { _ = try missing.serverContext() }
        #expect(error?.description.contains("--tls-cert") == true)
        let notPEM = TLSFiles(
            certificate: one + "/receiver.crt", privateKey: one + "/receiver.key", authority: one + "/receiver.key")
        #expect(throws: TLSSetupError.self) { _ = try notPEM.serverContext() }
    }

    /// The CA outlives the two ends' certificates, so they can be renewed from it.
    @Test func theCAOutlivesTheCertificates() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let now = Date()
        let created = try CertificateAuthority.create(
            in: directory, receiverNames: ["dr.example"], senderName: "pg-main",
            validDays: 30, caValidDays: 3650, now: now)
        let ca = try certificateValidity(use: "link CA", path: directory + "/ca.crt")
        let receiver = try certificateValidity(use: "link", path: directory + "/receiver.crt")
        #expect(abs(ca.notValidAfter.timeIntervalSince(now) - 3650 * 86400) < 60)
        #expect(abs(receiver.notValidAfter.timeIntervalSince(now) - 30 * 86400) < 60)
        #expect(abs(created.notValidAfter.timeIntervalSince(receiver.notValidAfter)) < 1)  // certificates keep whole seconds
        #expect(receiver.subject.contains("dr.example"))
    }

    /// Renewed certificates: new keys, the same names and uses, signed by the same CA (so an end with the old
    /// pair and an end with the new one still trust each other), and the old files kept aside.
    /// Symmetric sites: one certificate per site serves its receiver (server) and its sender (client); renew keeps
    /// both purposes.
    @Test func siteCertificatesServeBothEndsAndRenewAsThemselves() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let created = try CertificateAuthority.create(
            in: directory,
            leaves: [
                .site("hospital", hosts: ["db.hospital.example", "10.0.0.5"]), .site("dr", hosts: ["dr.hospital.example"]),
            ], validDays: 30, caValidDays: 400)
        #expect(
            created.files.map { ($0 as NSString).lastPathComponent } == [
                "ca.crt", "ca.key", "hospital.crt", "hospital.key", "dr.crt", "dr.key",
            ])
        for site in ["hospital", "dr"] {
            let files = TLSFiles(
                certificate: directory + "/\(site).crt", privateKey: directory + "/\(site).key", authority: directory + "/ca.crt")
            _ = try files.serverContext()
            _ = try files.clientContext()
            let certificate = try NIOSSLCertificate.fromPEMFile(directory + "/\(site).crt")[0]
            #expect(certificateName(certificate) == site)
            let parsed = try Certificate(derEncoded: try certificate.toDERBytes())
            let usages = Array(try #require(try parsed.extensions.extendedKeyUsage))
            #expect(usages.contains(.serverAuth) && usages.contains(.clientAuth))
        }
        let hospital = try Certificate(pemEncoded: String(contentsOfFile: directory + "/hospital.crt", encoding: .utf8))
        #expect(try hospital.extensions.subjectAlternativeNames?.contains(.dnsName("db.hospital.example")) == true)

        let renewed = try CertificateAuthority.renew(in: directory, validDays: 30)
        #expect(
            renewed.files.map { ($0 as NSString).lastPathComponent } == ["dr.crt", "dr.key", "hospital.crt", "hospital.key"])
        let renewedHospital = try Certificate(pemEncoded: String(contentsOfFile: directory + "/hospital.crt", encoding: .utf8))
        #expect(renewedHospital.subject == hospital.subject)
        #expect(try renewedHospital.extensions.extendedKeyUsage == hospital.extensions.extendedKeyUsage)
        #expect(try renewedHospital.extensions.subjectAlternativeNames == hospital.extensions.subjectAlternativeNames)
        #expect(renewedHospital.publicKey != hospital.publicKey)
        #expect(FileManager.default.fileExists(atPath: try #require(renewed.replaced) + "/hospital.key"))
        #expect(throws: (any Error).self) {
            try CertificateAuthority.create(
                in: temporaryDirectory(), leaves: [.site("a", hosts: []), .site("a", hosts: [])], validDays: 1)
        }
    }

    @Test func renewIssuesNewPairsFromTheSameCA() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let now = Date()
        _ = try CertificateAuthority.create(
            in: directory, receiverNames: ["dr.example", "10.20.0.5"], senderName: "pg-main",
            validDays: 10, caValidDays: 400, now: now)
        let oldReceiver = try Certificate(pemEncoded: String(contentsOfFile: directory + "/receiver.crt", encoding: .utf8))
        let oldKey = try String(contentsOfFile: directory + "/sender.key", encoding: .utf8)
        let renewed = try CertificateAuthority.renew(in: directory, validDays: 825, now: now)
        #expect(
            renewed.files.map { ($0 as NSString).lastPathComponent } == [
                "receiver.crt", "receiver.key", "sender.crt", "sender.key",
            ])
        // Never beyond the CA.
        #expect(abs(renewed.notValidAfter.timeIntervalSince(now) - 400 * 86400) < 600)
        let replaced = try #require(renewed.replaced)
        #expect(try String(contentsOfFile: replaced + "/sender.key", encoding: .utf8) == oldKey)
        #expect(try String(contentsOfFile: directory + "/sender.key", encoding: .utf8) != oldKey)
        for path in renewed.files {
            let mode = (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)?.intValue
            #expect(mode == 0o600, "\(path)")
        }
        let newReceiver = try Certificate(pemEncoded: String(contentsOfFile: directory + "/receiver.crt", encoding: .utf8))
        #expect(newReceiver.subject == oldReceiver.subject)
        #expect(try newReceiver.extensions.subjectAlternativeNames == oldReceiver.extensions.subjectAlternativeNames)
        #expect(newReceiver.publicKey != oldReceiver.publicKey)
        // Every mix of old and new pairs checks out against the one CA.
        for end in ["receiver", "sender"] {
            for folder in [directory, replaced] {
                let findings = TLSFiles(
                    certificate: folder + "/\(end).crt", privateKey: folder + "/\(end).key",
                    authority: directory + "/ca.crt"
                ).inspect(now: now, warnDays: 5)
                #expect(findings.allSatisfy { $0.level == .ok }, "\(findings)")
            }
        }
        _ = try TLSFiles(
            certificate: directory + "/receiver.crt", privateKey: directory + "/receiver.key",
            authority: directory + "/ca.crt"
        ).serverContext()
        _ = try TLSFiles(
            certificate: directory + "/sender.crt", privateKey: directory + "/sender.key",
            authority: directory + "/ca.crt"
        ).clientContext()
    }

    @Test func renewRefusesACAThatIsEndingOrMissing() throws {
        let directory = temporaryDirectory(), other = temporaryDirectory()
        defer {
            try? FileManager.default.removeItem(atPath: directory)
            try? FileManager.default.removeItem(atPath: other)
        }
        let now = Date()
        _ = try CertificateAuthority.create(
            in: directory, receiverNames: ["a"], senderName: "b", validDays: 20, caValidDays: 20, now: now)
        let ending = #expect(throws: TLSSetupError.self) {
            _ = try CertificateAuthority.renew(in: directory, validDays: 825, now: now)
        }
        #expect(ending?.description.contains("certs init makes a new CA") == true, "\(String(describing: ending))")
        #expect(FileManager.default.fileExists(atPath: directory + "/receiver.crt"))  // nothing moved
        // Certificates of another CA are not renewed by this one.
        _ = try CertificateAuthority.create(
            in: other, receiverNames: ["a"], senderName: "b", validDays: 20, caValidDays: 400, now: now)
        try FileManager.default.removeItem(atPath: other + "/receiver.crt")
        try FileManager.default.copyItem(atPath: directory + "/receiver.crt", toPath: other + "/receiver.crt")
        let foreign = #expect(throws: TLSSetupError.self) {
            _ = try CertificateAuthority.renew(in: other, validDays: 825, now: now)
        }
        #expect(foreign?.description.contains("was not issued by") == true, "\(String(describing: foreign))")
        try FileManager.default.removeItem(atPath: other + "/ca.key")
        let missing = #expect(throws: TLSSetupError.self) {
            _ = try CertificateAuthority.renew(in: other, validDays: 825, now: now)
        }
        #expect(missing?.description.contains("ca.key") == true, "\(String(describing: missing))")
    }

    @Test func addressesAreVerifiedWithoutSNI() throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try CertificateAuthority.create(in: directory, receiverNames: ["a"], senderName: "b", validDays: 1)
        let context = try TLSFiles(
            certificate: directory + "/sender.crt", privateKey: directory + "/sender.key",
            authority: directory + "/ca.crt"
        ).clientContext()
        #expect(ClientTLS(context: context, serverName: nil).serverName(connectingTo: "10.1.2.3") == nil)
        #expect(ClientTLS(context: context, serverName: nil).serverName(connectingTo: "::1") == nil)
        #expect(ClientTLS(context: context, serverName: nil).serverName(connectingTo: "dr.example") == "dr.example")
        #expect(ClientTLS(context: context, serverName: "dr").serverName(connectingTo: "10.1.2.3") == "dr")
    }
}

@Suite struct TLSReasonTests {
    @Test func boringSSLStacksBecomeReasons() {
        let raw =
            "handshake failed: sslError([Error: 268435581 error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED at /x/handshake.cc:320])"
        #expect(readableTLSReason(raw).hasPrefix("CERTIFICATE_VERIFY_FAILED: "))
        #expect(readableTLSReason("error:1000:SSL routines:OPENSSL_internal:SOMETHING_NEW at /x").hasPrefix("SOMETHING_NEW"))
        #expect(readableTLSReason("plain words") == "plain words")
    }

    @Test func aDroppedConnectionIsNotATLSFailure() {
        #expect(tlsFailure(NIOSSLError.uncleanShutdown) == nil)
        #expect(tlsFailure(NIOSSLError.handshakeFailed(.sslError([]))) != nil)
        struct Other: Error {}
        #expect(tlsFailure(Other()) == nil)
    }
}
