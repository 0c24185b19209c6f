<?php
/*
 * Router for the joomla-like test app (PHP's built-in server):
 *   php -S 127.0.0.1:PORT -t tests/apps/joomla-like tests/apps/joomla-like/router.php
 * Existing files (images/..., media/...) are served as they are; /administrator/... goes to
 * administrator/index.php, /api/... to api/index.php (also /api/index.php/v1/...), the rest to
 * index.php, like Joomla's .htaccess / web server config.
 */
$path = rawurldecode(parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH) ?? '/');
$root = __DIR__;
if (strpos($path, '..') !== false) {
    http_response_code(400);
    return true;
}
if (strncmp($path, '/lib/', 5) === 0 || $path === '/lib') {
    http_response_code(404);
    return true;
}
$images = getenv('JOOMLA_LIKE_IMAGES');
if ($images && strncmp($path, '/images/', 8) === 0 && is_file($images . substr($path, 7))) {
    $file = $images . substr($path, 7);
    $types = ['jpg' => 'image/jpeg', 'jpeg' => 'image/jpeg', 'png' => 'image/png', 'gif' => 'image/gif',
        'webp' => 'image/webp', 'svg' => 'image/svg+xml', 'pdf' => 'application/pdf', 'mp4' => 'video/mp4'];
    header('Content-Type: ' . ($types[strtolower(pathinfo($file, PATHINFO_EXTENSION))] ?? 'application/octet-stream'));
    header('Content-Length: ' . filesize($file));
    if ($_SERVER['REQUEST_METHOD'] !== 'HEAD') {
        readfile($file);
    }
    return true;
}
if ($path !== '/' && is_file($root . $path) && !preg_match('/\.php$/', $path)) {
    return false;
}
if (preg_match('#^/(images|media)/#', $path)) {
    // a missing file under a static folder: the web server's 404, not the CMS
    http_response_code(404);
    header('Content-Type: text/plain; charset=utf-8');
    echo "Not Found\n";
    return true;
}
if (preg_match('#^/administrator(/|$)#', $path)) {
    $script = '/administrator/index.php';
} elseif (preg_match('#^/api(/|$)#', $path)) {
    $script = '/api/index.php';
} else {
    $script = '/index.php';
}
$_SERVER['SCRIPT_NAME'] = $script;
$_SERVER['PHP_SELF'] = $script;
$_SERVER['SCRIPT_FILENAME'] = $root . $script;
chdir(dirname($root . $script));
require $root . $script;
return true;
