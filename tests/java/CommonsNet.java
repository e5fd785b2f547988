// Apache Commons Net's FTPSClient through ftpsgate, driven by tests/interop.rs.
//
// Usage: CommonsNet HOST PORT implicit|explicit USER PASSWORD roundtrip|refused
//   roundtrip: STOR 1 MiB + 7 of random bytes, LIST, RETR it back; SHA-256 compared.
//   refused:   RETR over a data connection that does not resume the control connection's TLS
//              session (Commons Net never does): must get 522, promptly.
// Prints one line "ok ..." and exits 0, or "FAIL ..." and exits 1.

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.util.HexFormat;

import org.apache.commons.net.ftp.FTP;
import org.apache.commons.net.ftp.FTPFile;
import org.apache.commons.net.ftp.FTPReply;
import org.apache.commons.net.ftp.FTPSClient;
import org.apache.commons.net.util.TrustManagerUtils;

public class CommonsNet {
    static void fail(String why) {
        System.out.println("FAIL " + why);
        System.exit(1);
    }

    static String sha256(byte[] data) throws Exception {
        return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(data));
    }

    public static void main(String[] args) throws Exception {
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        boolean implicit = args[2].equals("implicit");
        String user = args[3], password = args[4], mode = args[5];

        FTPSClient ftp = new FTPSClient("TLS", implicit);
        ftp.setTrustManager(TrustManagerUtils.getAcceptAllTrustManager());
        ftp.setDefaultTimeout(30_000);
        ftp.setConnectTimeout(30_000);
        ftp.connect(host, port);
        if (!FTPReply.isPositiveCompletion(ftp.getReplyCode())) fail("greeting " + ftp.getReplyString());
        ftp.setSoTimeout(30_000);
        if (!ftp.login(user, password)) fail("login " + ftp.getReplyString());
        ftp.execPBSZ(0);
        ftp.execPROT("P");
        ftp.setFileType(FTP.BINARY_FILE_TYPE);
        ftp.enterLocalPassiveMode();

        byte[] data = new byte[(1 << 20) + 7];
        new SecureRandom().nextBytes(data);
        if (mode.equals("refused")) {
            long began = System.nanoTime();
            int code;
            try {
                ftp.retrieveFile("anything.bin", new ByteArrayOutputStream());
                code = ftp.getReplyCode();
            } catch (IOException e) {
                // The gateway closed the data connection: the reply is still to be read.
                code = ftp.getReply();
            }
            double secs = (System.nanoTime() - began) / 1e9;
            if (code != 522) fail("wanted 522, got " + code + " " + ftp.getReplyString());
            if (secs > 10) fail("522 after " + secs + " s");
            if (!ftp.sendNoOp()) fail("session after 522: " + ftp.getReplyString());
            ftp.logout();
            System.out.printf("ok 522 after %.2f s%n", secs);
            return;
        }
        String name = "commons-net-" + (implicit ? "implicit" : "explicit") + ".bin";
        if (!ftp.storeFile(name, new ByteArrayInputStream(data))) fail("STOR " + ftp.getReplyString());
        boolean listed = false;
        for (FTPFile f : ftp.listFiles()) {
            listed |= f.getName().equals(name) && f.getSize() == data.length;
        }
        if (!listed) fail("LIST does not show " + name);
        ByteArrayOutputStream back = new ByteArrayOutputStream();
        if (!ftp.retrieveFile(name, back)) fail("RETR " + ftp.getReplyString());
        if (!sha256(back.toByteArray()).equals(sha256(data))) fail("RETR: hash mismatch");
        ftp.logout();
        ftp.disconnect();
        System.out.println("ok " + name + " " + sha256(data));
    }
}
