<?php
/*
 * Write a photo-like JPEG (gradient + shapes + noise) with php-gd:
 *   php scripts/e2e/make-jpeg.php OUT.jpg [WIDTH=2000] [HEIGHT=1500] [SEED=1] [QUALITY=85]
 * Deterministic for a given seed. Prints the written path.
 */
if ($argc < 2) {
    fwrite(STDERR, "usage: php make-jpeg.php OUT.jpg [WIDTH] [HEIGHT] [SEED] [QUALITY]\n");
    exit(2);
}
$out = $argv[1];
$w = (int)($argv[2] ?? 2000);
$h = (int)($argv[3] ?? 1500);
$seed = (int)($argv[4] ?? 1);
$q = (int)($argv[5] ?? 85);
mt_srand($seed);
$im = imagecreatetruecolor($w, $h);
// sky-to-ground vertical gradient
for ($y = 0; $y < $h; $y++) {
    $t = $y / max(1, $h - 1);
    $r = (int)(40 + 180 * $t + 20 * sin($t * 7 + $seed));
    $g = (int)(90 + 100 * (1 - abs(0.5 - $t) * 2));
    $b = (int)(220 - 170 * $t);
    imageline($im, 0, $y, $w - 1, $y, imagecolorallocate($im, max(0, min(255, $r)), max(0, min(255, $g)), max(0, min(255, $b))));
}
// soft blobs
for ($i = 0; $i < 60; $i++) {
    $c = imagecolorallocatealpha($im, mt_rand(0, 255), mt_rand(0, 255), mt_rand(0, 255), mt_rand(60, 110));
    imagefilledellipse($im, mt_rand(0, $w), mt_rand(0, $h), mt_rand($w / 40, $w / 4), mt_rand($h / 40, $h / 4), $c);
}
// fine noise so the JPEG has photo-like entropy
$n = (int)($w * $h / 40);
for ($i = 0; $i < $n; $i++) {
    $v = mt_rand(0, 255);
    imagesetpixel($im, mt_rand(0, $w - 1), mt_rand(0, $h - 1), imagecolorallocatealpha($im, $v, $v, $v, 90));
}
imagefilter($im, IMG_FILTER_SMOOTH, 6);
if (!imagejpeg($im, $out, $q)) {
    fwrite(STDERR, "cannot write $out\n");
    exit(1);
}
echo $out, "\n";
