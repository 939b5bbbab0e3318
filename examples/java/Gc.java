// A Java target for javagc (libbpf-tools): waits ARG milliseconds, then asks for five
// garbage collections, whose begin/end USDT probes in libjvm.so javagc times.
public class Gc {
    public static void main(String[] a) throws Exception {
        Thread.sleep(Integer.parseInt(a[0]));
        for (int i = 0; i < 5; i++) { System.gc(); Thread.sleep(100); }
        System.out.println("done");
    }
}
