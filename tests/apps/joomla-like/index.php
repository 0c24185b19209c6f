<?php
/*
 * joomla-like site: one article page listing what is in images/, with the markup Joomla's
 * editors write (relative "images/..." src, as TinyMCE + the media field store it) and the
 * absolute URLs the media manager hands out (Uri::root() . "images/...").
 */
require __DIR__ . '/lib/common.php';
$root = jl_root_url();
$reqPath = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
if ($reqPath !== '/' && $reqPath !== '/index.php') {
    http_response_code(404);
}
$h = fn($s) => htmlspecialchars((string)$s, ENT_QUOTES);
header('Content-Type: text/html; charset=utf-8');
$files = array_values(array_filter(jl_list('/'), fn($i) => $i['type'] === 'file'));
?>
<!DOCTYPE html>
<html lang="en-gb"><head><meta charset="utf-8"><base href="<?= $h($root) ?>">
<title>Home - joomla-like</title>
<?php if ($files): ?><meta property="og:image" content="<?= $h($root . 'images/' . $files[0]['name']) ?>"><?php endif; ?>
</head><body><main><div class="com-content-article item-page">
<h1>joomla-like</h1>
<?php foreach ($files as $f): $rel = 'images/' . $f['name']; ?>
<figure class="item-image"><img src="<?= $h($rel) ?>" alt="" width="<?= (int)$f['width'] ?>" height="<?= (int)$f['height'] ?>" loading="lazy"></figure>
<p><a href="<?= $h($root . $rel) ?>"><?= $h($f['name']) ?></a></p>
<?php endforeach; ?>
</div></main></body></html>
