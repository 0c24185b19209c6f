<?php
/*
 * joomla-like web services API (Joomla 4.1+: plugins/webservices/media,
 * api/components/com_media/src/Controller/MediaController.php):
 *
 *   POST   /api/index.php/v1/media/files   JSON {"path":"local-images:/sub/x.jpg","content":"<base64>","override":false}
 *   GET    /api/index.php/v1/media/files[/PATH/]   list;  GET .../files/PATH  one item
 *   PATCH  /api/index.php/v1/media/files/PATH      JSON {"path":..., "content":...}
 *   DELETE /api/index.php/v1/media/files/PATH      204
 *
 * Auth: "Authorization: Bearer TOKEN" or "X-Joomla-Token: TOKEN" (TOKEN: JL_API_TOKEN in
 * lib/common.php). Answers are JSON:API documents, Content-Type application/vnd.api+json.
 */
require __DIR__ . '/../lib/common.php';

function api_out(int $status, $doc): void
{
    http_response_code($status);
    header('Content-Type: application/vnd.api+json; charset=utf-8');
    if ($doc !== null) {
        echo json_encode($doc);
    }
}

function api_error(int $code, string $title): void
{
    api_out($code, ['errors' => [['title' => $title, 'code' => $code]]]);
}

function api_item(array $info): array
{
    $attrs = $info;
    return ['type' => 'media', 'id' => '0', 'attributes' => $attrs];
}

$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
$route = preg_replace('#^/api(/index\.php)?#', '', $path);
$self = jl_root_url() . 'api/index.php' . $route;
$auth = $_SERVER['HTTP_AUTHORIZATION'] ?? '';
$token = $_SERVER['HTTP_X_JOOMLA_TOKEN'] ?? (stripos($auth, 'Bearer ') === 0 ? substr($auth, 7) : '');
if (!hash_equals(JL_API_TOKEN, (string)$token)) {
    api_error(401, 'Forbidden');
    return;
}
if (!preg_match('#^/v1/media/files(?:/(.*))?$#', $route, $m)) {
    api_error(404, 'Resource not found');
    return;
}
$itemPath = isset($m[1]) ? rawurldecode($m[1]) : null;
$method = $_SERVER['REQUEST_METHOD'];

if ($method === 'GET') {
    $p = $itemPath ?? ($_GET['path'] ?? JL_ADAPTER . ':/');
    [$adapter, $rel] = jl_split_adapter($p);
    $rel = jl_clean_path($rel);
    if ($adapter !== JL_ADAPTER || $rel === null || !file_exists(JL_IMAGES . $rel)) {
        api_error(404, 'Resource not found');
        return;
    }
    $url = !empty($_GET['url']);
    if (is_dir(JL_IMAGES . $rel)) {
        $items = array_map('api_item', jl_list($rel, $url));
        api_out(200, ['links' => ['self' => $self], 'data' => $items, 'meta' => ['total-pages' => 1]]);
    } else {
        api_out(200, ['links' => ['self' => $self], 'data' => api_item(jl_file_info($rel, $url))]);
    }
    return;
}

if ($method === 'POST' || $method === 'PATCH') {
    $body = json_decode(file_get_contents('php://input'), true);
    if (!is_array($body)) {
        api_error(400, 'Bad Request');
        return;
    }
    $p = (string)($body['path'] ?? ($method === 'PATCH' ? (string)$itemPath : ''));
    $content = (string)($body['content'] ?? '');
    $missing = [];
    if ($p === '') {
        $missing[] = 'path';
    }
    if ($content === '' && strpos($p, '.') !== false && $method === 'POST') {
        $missing[] = 'content';
    }
    if ($missing) {
        api_error(400, 'Missing required parameter(s): ' . implode(' & ', $missing));
        return;
    }
    [$adapter, $rel] = jl_split_adapter($p);
    $rel = jl_clean_path($rel);
    if ($adapter !== JL_ADAPTER || $rel === null) {
        api_error(400, 'Invalid path');
        return;
    }
    $dir = dirname($rel);
    $name = jl_safe_name(basename($rel));
    $rel = rtrim($dir, '/') . '/' . $name;
    $override = $body['override'] ?? ($method === 'PATCH');
    $data = base64_decode($content, true);
    if ($data === false || $data === '') {
        if ($method === 'POST') {
            if (file_exists(JL_IMAGES . $rel) && !$override) {
                api_error(409, 'File exists');
                return;
            }
            @mkdir(JL_IMAGES . $rel, 0777, true);
            api_out(200, ['links' => ['self' => $self], 'data' => api_item(jl_file_info($rel))]);
            return;
        }
        api_error(400, 'Bad Request');
        return;
    }
    if (!jl_is_media_file($rel)) {
        api_error(400, 'Invalid path');
        return;
    }
    if (file_exists(JL_IMAGES . $rel) && !$override) {
        api_error(409, 'File exists');
        return;
    }
    @mkdir(JL_IMAGES . $dir, 0777, true);   // File::write() creates missing folders
    file_put_contents(JL_IMAGES . $rel, $data);
    api_out(200, ['links' => ['self' => $self], 'data' => api_item(jl_file_info($rel))]);
    return;
}

if ($method === 'DELETE' && $itemPath !== null) {
    [$adapter, $rel] = jl_split_adapter($itemPath);
    $rel = jl_clean_path($rel);
    if ($adapter !== JL_ADAPTER || $rel === null || !is_file(JL_IMAGES . $rel)) {
        api_error(404, 'Resource not found');
        return;
    }
    unlink(JL_IMAGES . $rel);
    api_out(204, null);
    return;
}
api_error(405, 'Method not allowed');
