import Foundation
import NIOCore
import NIOHTTP1
import Testing

@testable import ObjectStore

@Suite struct S3XMLTests {
    @Test func aListingWithEntitiesAndAContinuationToken() throws {
        let xml = """
            <?xml version="1.0" encoding="UTF-8"?>
            <ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
              <Name>b</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount><IsTruncated>true</IsTruncated>
              <NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>
              <Contents><Key>p/a&amp;b</Key><Size>16777216</Size><ETag>&quot;abc&quot;</ETag></Contents>
              <Contents><Key>p/&#x41;&#66;</Key><Size>3</Size><ETag>"def-2"</ETag><Owner/></Contents>
            </ListBucketResult>
            """
        let root = try S3XML.parse(Array(xml.utf8))
        #expect(root.name == "ListBucketResult")
        #expect(root.value("IsTruncated") == "true")
        #expect(root.value("NextContinuationToken") == "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=")
        let contents = root.children("Contents")
        #expect(contents.map { $0.value("Key") } == ["p/a&b", "p/AB"])
        #expect(contents[0].value("ETag") == "\"abc\"")
        #expect(contents[1].child("Owner") != nil)
    }

    @Test func malformedDocumentsAreRefusedNotGuessed() {
        #expect(throws: XMLParseError.self) { try S3XML.parse(Array("<a><b></a>".utf8)) }
        #expect(throws: XMLParseError.self) { try S3XML.parse(Array("<a>".utf8)) }
        #expect(throws: XMLParseError.self) { try S3XML.parse(Array("".utf8)) }
        #expect(throws: XMLParseError.self) { try S3XML.parse(Array("<a>&bogus;</a>".utf8)) }
    }

    @Test func anErrorBodyAfterA200IsAFailure() {
        // RGW and S3 send whitespace to keep a long CompleteMultipartUpload alive, then the result or an error.
        let body = ByteBuffer(
            string:
                "\n\n<?xml version=\"1.0\"?><Error><Code>InternalError</Code><Message>We encountered an internal error.</Message><RequestId>r-1</RequestId></Error>"
        )
        #expect {
            try S3Client.xml(body, operation: "CompleteMultipartUpload", key: "k")
        } throws: { error in
            let error = error as? S3Error
            return error?.code == "InternalError"
                && error?.description
                    == "CompleteMultipartUpload k: the store answered HTTP 200 InternalError: We encountered an internal error., request id r-1"
        }
    }

    @Test func storeErrorsReadTheXMLBodyAndHint() {
        let error = S3Client.storeError(
            operation: "PutObject", key: "p/1/wal/000000010000000000000001", status: 400,
            body: ByteBuffer(
                string: "<Error><Code>BadDigest</Code><Message>The Content-MD5 you specified did not match.</Message></Error>"),
            headers: ["x-amz-request-id": "tx1"])
        #expect(
            error.description
                == "PutObject p/1/wal/000000010000000000000001: the store answered HTTP 400 BadDigest: The Content-MD5 you "
                + "specified did not match., request id tx1 (the body changed on the way; the upload is retried)")
        let bare = S3Client.storeError(operation: "HeadObject", key: "k", status: 404, body: ByteBuffer(), headers: [:])
        #expect(bare.code == "Not Found")
        #expect(bare.status == 404)
    }
}

@Suite struct S3ConfigurationTests {
    @Test func endpoints() throws {
        let plain = try S3Endpoint(parsing: "http://127.0.0.1:7480")
        #expect(plain.hostHeader == "127.0.0.1:7480")
        #expect(!plain.isTLS)
        let tls = try S3Endpoint(parsing: "https://s3.example.org/gateway/")
        #expect(tls.port == 443)
        #expect(tls.hostHeader == "s3.example.org")
        #expect(tls.basePath == "/gateway")
        #expect(throws: S3ConfigurationError.self) { try S3Endpoint(parsing: "ftp://host") }
        #expect(throws: S3ConfigurationError.self) { try S3Endpoint(parsing: "s3.example.org") }
        #expect(throws: S3ConfigurationError.self) { try S3Endpoint(parsing: "https://key:secret@host") }
    }

    @Test func credentialsFileInTheSharedFormat() throws {
        let text = """
            # walship's archive
            [other]
            aws_access_key_id = WRONG
            aws_secret_access_key = wrong

            [default]
            aws_access_key_id = AKID
            aws_secret_access_key = se=cret
            """
        let credentials = try AWSCredentials.parse(text, profile: "default", origin: "f")
        #expect(credentials == AWSCredentials(accessKeyID: "AKID", secretAccessKey: "se=cret"))
        let bare = try AWSCredentials.parse("aws_access_key_id=A\naws_secret_access_key=B\n", profile: "default", origin: "f")
        #expect(bare.accessKeyID == "A")
        #expect {
            try AWSCredentials.parse("[default]\naws_access_key_id = A\n", profile: "default", origin: "/etc/walship/s3")
        } throws: { error in
            "\(error)".contains("/etc/walship/s3 has no aws_access_key_id and aws_secret_access_key")
        }
    }

    @Test func credentialsFromTheEnvironment() {
        #expect(AWSCredentials.fromEnvironment(["AWS_ACCESS_KEY_ID": "A"]) == nil)
        #expect(
            AWSCredentials.fromEnvironment(["AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "B", "AWS_SESSION_TOKEN": "T"])
                == AWSCredentials(accessKeyID: "A", secretAccessKey: "B", sessionToken: "T"))
    }
}
